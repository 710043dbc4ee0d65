"""Preprocessing plans and their exact inverses, normalization, palette and overlay."""
from __future__ import annotations

import numpy as np
import pytest

from evit_ros.contract import IMAGENET_MEAN, IMAGENET_STD
from evit_ros.datasets import CITYSCAPES
from evit_ros.errors import ConfigError, FrameError
from evit_ros.pipeline.postprocess import Palette, labels_to_source, mask_padding, overlay, upsample_nearest
from evit_ros.pipeline.preprocess import Preprocessor, make_plan, normalize_nchw

RNG = np.random.default_rng(2)
MODEL = (32, 64)


def _pattern(hw: tuple[int, int]) -> np.ndarray:
    return RNG.integers(0, 19, hw, dtype=np.uint8)


def _blocks(p: np.ndarray, k: int = 2) -> np.ndarray:
    return np.repeat(np.repeat(p, k, axis=0), k, axis=1)


@pytest.mark.parametrize('mode, src_hw, box', [
    ('stretch', (64, 128), None),
    ('letterbox', (48, 128), None),       # content 24x64 at rows 4..28 of the model image
    ('crop', (64, 256), (0, 64, 64, 128)),  # model sees the centre 64x128 of the frame
])
def test_round_trip_is_exact(mode: str, src_hw: tuple[int, int], box: tuple | None) -> None:
    pre = Preprocessor(MODEL, mode, 'nearest', pad_value=250)
    plan = pre.plan(src_hw)
    dy0, dx0, dh, dw = plan.dst_box
    # a frame made of 2x2 blocks, so the model image is exactly the block pattern
    source_labels = _blocks(_pattern((src_hw[0] // 2, src_hw[1] // 2)))
    frame = np.repeat(source_labels[:, :, None], 3, axis=2)
    batch = pre.run([frame])
    model_labels = batch[0, :, :, 0].copy()
    if mode == 'letterbox':
        assert (dy0, dh, dw) == (4, 24, 64)
        assert np.all(model_labels[:dy0] == 250) and np.all(model_labels[dy0 + dh:] == 250)
    back = labels_to_source(model_labels, plan, src_hw)
    if box is None:
        np.testing.assert_array_equal(back, source_labels)
    else:
        y0, x0, h, w = box
        assert plan.crop_box == box
        np.testing.assert_array_equal(back[y0:y0 + h, x0:x0 + w], source_labels[y0:y0 + h, x0:x0 + w])
        outside = np.ones(src_hw, bool)
        outside[y0:y0 + h, x0:x0 + w] = False
        assert np.all(back[outside] == 255)
    # the plan maps model pixel centres to frame coordinates consistently with the data
    yy, xx = plan.model_to_source_yx(np.array([dy0 + 0.0]), np.array([dx0 + 0.0]))
    # (2x scale: the first model pixel covers frame pixels 0 and 1 of the box, centre 0.5)
    assert yy[0] == pytest.approx(plan.src_box[0] + 0.5) and xx[0] == pytest.approx(plan.src_box[1] + 0.5)


def test_non_integer_scales_are_consistent() -> None:
    src_hw = (100, 150)
    for mode in ('stretch', 'letterbox', 'crop'):
        plan = make_plan(src_hw, MODEL, mode)
        sy0, sx0, sh, sw = plan.src_box
        dy0, dx0, dh, dw = plan.dst_box
        assert 0 <= sy0 and sy0 + sh <= 100 and 0 <= sx0 and sx0 + sw <= 150
        assert 0 <= dy0 and dy0 + dh <= 32 and 0 <= dx0 and dx0 + dw <= 64
        if mode != 'stretch':
            assert abs(plan.scale_x - plan.scale_y) / plan.scale_x < 0.05
        labels = np.full(MODEL, 3, np.uint8)
        back = labels_to_source(labels, plan, src_hw)
        assert np.all(back[sy0:sy0 + sh, sx0:sx0 + sw] == 3)
        assert (back == 255).sum() == 100 * 150 - sh * sw


def test_batch_buffer_is_reused_and_sizes_mix() -> None:
    pre = Preprocessor(MODEL, 'letterbox', 'linear')
    frames = [RNG.integers(0, 256, (48, 80, 3), dtype=np.uint8), RNG.integers(0, 256, (90, 60, 3), dtype=np.uint8)]
    a = pre.run(frames)
    b = pre.run(frames[:1])
    assert a.shape == (2, 32, 64, 3) and b.shape == (1, 32, 64, 3) and np.shares_memory(a, b)
    out = np.empty((2, 32, 64, 3), np.uint8)
    assert pre.run(frames, out=out) is out
    with pytest.raises(FrameError):
        pre.run([np.zeros((10, 10), np.uint8)])
    with pytest.raises(ConfigError):
        Preprocessor(MODEL, 'zoom', 'linear')
    with pytest.raises(ConfigError):
        Preprocessor(MODEL, 'crop', 'lanczos')


def test_normalize_nchw_matches_formula() -> None:
    batch = RNG.integers(0, 256, (2, 8, 16, 3), dtype=np.uint8)
    out = normalize_nchw(batch, IMAGENET_MEAN, IMAGENET_STD)
    ref = (batch.astype(np.float64) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert out.dtype == np.float32 and out.shape == (2, 3, 8, 16)
    np.testing.assert_allclose(out, ref.transpose(0, 3, 1, 2), atol=1e-5)


def test_upsample_and_padding() -> None:
    low = _pattern((4, 8))
    up = upsample_nearest(low, (32, 64))
    np.testing.assert_array_equal(up, np.repeat(np.repeat(low, 8, 0), 8, 1))
    up32 = upsample_nearest(low.astype(np.int32), (32, 64))
    np.testing.assert_array_equal(up32, up)
    plan = make_plan((48, 128), MODEL, 'letterbox')
    lab = np.zeros(MODEL, np.uint8)
    mask_padding(lab, plan)
    assert (lab == 255).sum() == 32 * 64 - 24 * 64


def test_palette_lookup_overrides_and_ignore() -> None:
    pal = Palette(CITYSCAPES.colors, overrides=((11, (1, 2, 3)),))
    labels = _pattern((16, 24))
    labels[0, :5] = 255
    labels[1, :5] = 11
    labels[2, :5] = 200  # no color: black
    ref = np.zeros((256, 3), np.uint8)
    ref[:19] = CITYSCAPES.colors
    ref[11] = (1, 2, 3)
    out = np.empty((16, 24, 3), np.uint8)
    assert pal.colorize(labels, out=out) is out
    np.testing.assert_array_equal(out, ref[labels])
    assert pal.color_of(11) == (1, 2, 3) and pal.color_of(255) == (0, 0, 0) and pal.color_of(0) == (128, 64, 128)
    planes = [np.full((16, 24), 7, np.uint8) for _ in range(3)]      # reused scratch: same result
    again = np.zeros_like(out)
    assert pal.colorize(labels, out=again, planes=planes) is again
    np.testing.assert_array_equal(again, ref[labels])
    with pytest.raises(ConfigError, match='3 scratch planes'):
        pal.colorize(labels, planes=planes[:2])
    with pytest.raises(ConfigError):
        Palette(CITYSCAPES.colors, overrides=((255, (1, 1, 1)),))


def test_overlay_blend() -> None:
    rgb = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    col = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = overlay(rgb, col, 0.25)
    ref = 0.75 * rgb + 0.25 * col
    assert np.all(np.abs(out.astype(float) - ref) <= 0.51)
    np.testing.assert_array_equal(overlay(rgb, col, 0.0), rgb)
    with pytest.raises(ConfigError):
        overlay(rgb, col[:4], 0.5)
