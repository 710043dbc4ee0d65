"""Segmenter end to end with a fake backend (every head, batching, buffer reuse) and one real ORT session."""
from __future__ import annotations

import numpy as np
import pytest

from evit_ros.config import DrivableConfig, InputConfig, OutputConfig
from evit_ros.datasets import CITYSCAPES
from evit_ros.errors import ConfigError, FrameError
from evit_ros.inference import InferenceBackend, InferenceResult, ModelIO, TensorSpec
from evit_ros.pipeline.segmenter import Segmenter

MODEL_HW = (64, 128)
CAM_HW = (128, 256)
RNG = np.random.default_rng(4)


def _label_fn(rgb: np.ndarray) -> np.ndarray:
    """What the fake network 'predicts': a class id from the red channel (0..18, 255 for very bright)."""
    lab = (rgb[..., 0] // 13).astype(np.uint8)
    lab[lab > 18] = 255
    return lab


class FakeBackend(InferenceBackend):
    """Computes labels from pixels so results are checkable; records every batch it was given."""

    name = 'fake'

    def __init__(self, head: str, max_batch: int = 8, static_batch: int = 0, input_format: str = 'uint8-nhwc'):
        super().__init__()
        self.head, self.max_batch, self.static, self.fmt = head, max_batch, static_batch, input_format
        self.calls: list[tuple[int, ...]] = []
        self._labels = np.empty((max(max_batch, static_batch, 1), *MODEL_HW), np.uint8)  # reused like real ones

    def load(self) -> None:
        self._loaded = True

    @property
    def io(self) -> ModelIO:
        n = self.static or -1
        shape = (n, *MODEL_HW, 3) if self.fmt == 'uint8-nhwc' else (n, 3, *MODEL_HW)
        dtype = 'uint8' if self.fmt == 'uint8-nhwc' else 'float32'
        return ModelIO('fake', self.head, self.fmt, TensorSpec('images', shape, dtype), (), self.max_batch,
                       CITYSCAPES.class_names, CITYSCAPES.colors)

    def infer(self, batch: np.ndarray) -> InferenceResult:
        self.calls.append(batch.shape)
        if self.fmt == 'float-nchw':  # undo the ImageNet normalization to recover the pixels
            std = np.array([0.229, 0.224, 0.225])[None, :, None, None]
            mean = np.array([0.485, 0.456, 0.406])[None, :, None, None]
            batch = np.rint((batch * std + mean) * 255).clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        n = batch.shape[0]
        labels = self._labels[:n]
        labels[:] = _label_fn(batch)
        if self.head == 'labels':
            return InferenceResult(labels=labels)
        if self.head == 'labels+confidence':
            return InferenceResult(labels=labels, confidence=batch[..., 1].copy())
        low = labels[:, ::8, ::8]
        if self.head == 'labels-lowres':
            return InferenceResult(labels=low.astype(np.int32))
        logits = np.zeros((n, 19, *low.shape[1:]), np.float32)
        for c in range(19):
            logits[:, c] = np.where(low == c, 5.0, 0.0)
        return InferenceResult(logits=logits)


def _frame(seed: int) -> np.ndarray:
    """Camera frame of 16x16 blocks (8x8 at the model size) so even 1/8 heads are exact."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 247, (CAM_HW[0] // 16, CAM_HW[1] // 16, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 16, 0), 16, 1)


def _segmenter(backend: FakeBackend, mode: str = 'stretch', **out_kw) -> Segmenter:
    backend.load()
    return Segmenter(backend, input_cfg=InputConfig(64, 128, mode, 'area'), outputs=OutputConfig(**out_kw),
                     drivable=DrivableConfig(groups=(('drivable', ('road',)), ('walkable', ('sidewalk',))),
                                             roi=((0.0, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0))),
                     dataset=CITYSCAPES)


@pytest.mark.parametrize('head', ['labels', 'labels+confidence', 'labels-lowres', 'logits'])
def test_every_head_gives_exact_labels_at_camera_size(head: str) -> None:
    seg = _segmenter(FakeBackend(head))
    frames = [_frame(1), _frame(2)]
    res = seg.process(frames, want_color=True, want_overlay=True, want_confidence=True)
    assert len(res) == 2
    for f, r in zip(frames, res, strict=True):
        expected = _label_fn(f)
        if head == 'logits':
            expected[expected == 255] = 0  # 19 logit channels cannot express ignore; argmax picks class 0
        assert r.labels.shape == CAM_HW and r.labels.dtype == np.uint8
        np.testing.assert_array_equal(r.labels, expected)
        assert r.color.shape == (*CAM_HW, 3) and r.overlay.shape == (*CAM_HW, 3)
        lut = np.zeros((256, 3), np.uint8)
        lut[:19] = CITYSCAPES.colors
        np.testing.assert_array_equal(r.color, lut[expected])
        if head in ('labels+confidence',):
            np.testing.assert_array_equal(r.confidence, f[..., 1])
        elif head == 'logits':
            assert r.confidence.shape == CAM_HW and r.confidence.min() > 128  # one 5.0 logit among 19 zeros
        else:
            assert r.confidence is None
        road = r.groups['drivable']
        np.testing.assert_array_equal(road.mask > 0, expected == 0)
        assert road.fraction == pytest.approx((expected == 0).mean())
        assert road.roi_fraction == pytest.approx((expected[64:] == 0).mean())
        assert road.boundary_rows.shape == (CAM_HW[1],)
        np.testing.assert_allclose(r.class_fractions, [(expected == c).mean() for c in range(19)])
        assert set(r.timings_ms) == {'preprocess', 'infer', 'postprocess'}


def test_batching_static_batch_and_buffer_reuse() -> None:
    backend = FakeBackend('labels', max_batch=2, static_batch=2)
    seg = _segmenter(backend, mask_resolution='camera')
    frames = [_frame(3), _frame(4), _frame(5)]
    r1 = seg.process(frames, want_color=False)
    assert backend.calls == [(2, *MODEL_HW, 3), (2, *MODEL_HW, 3)]  # padded last chunk of a static graph
    first = [r.labels.copy() for r in r1]
    assert r1[0].color is None and r1[0].overlay is None
    r2 = seg.process(frames[::-1], want_color=False)
    for i in range(3):
        assert np.shares_memory(r1[i].labels, r2[i].labels)  # per-slot buffers, valid until the next call
    np.testing.assert_array_equal(r2[0].labels, first[2])
    np.testing.assert_array_equal(r2[2].labels, first[0])


def test_mixed_sizes_letterbox_and_model_resolution() -> None:
    seg = _segmenter(FakeBackend('labels'), mode='letterbox')
    small = _frame(6)[:64].copy()  # 64x256: letterboxed into 32 rows of the 64x128 model image
    small[:16, :16, 0] = 5  # a road block
    res = seg.process([_frame(7), small])
    assert res[0].labels.shape == CAM_HW and res[1].labels.shape == (64, 256)
    np.testing.assert_array_equal(res[1].labels, _label_fn(small))
    seg.update(outputs=OutputConfig(mask_resolution='model', palette_overrides=((0, (1, 2, 3)),)))
    res = seg.process([small], want_overlay=True)
    lab = res[0].labels
    assert lab.shape == MODEL_HW and np.all(lab[:16] == 255) and np.all(lab[48:] == 255)
    assert res[0].overlay.shape == (*MODEL_HW, 3)
    np.testing.assert_array_equal(res[0].color[lab == 0][:1], [[1, 2, 3]])


def test_crop_mode_outside_is_ignore_and_black() -> None:
    seg = _segmenter(FakeBackend('labels'), mode='crop')
    wide = np.concatenate([_frame(11), _frame(12)], axis=1)  # 128x512: the model sees the centre 128x256
    r = seg.process([wide], want_overlay=True)[0]
    assert r.plan.crop_box == (0, 128, 128, 256)
    np.testing.assert_array_equal(r.labels[:, 128:384], _label_fn(wide[:, 128:384]))
    assert np.all(r.labels[:, :128] == 255) and np.all(r.labels[:, 384:] == 255)
    assert np.all(r.color[:, :128] == 0) and np.all(r.color[:, 384:] == 0)
    lut = np.zeros((256, 3), np.uint8)
    lut[:19] = CITYSCAPES.colors
    np.testing.assert_array_equal(r.color, lut[r.labels])


def test_float_input_and_live_group_updates() -> None:
    seg = _segmenter(FakeBackend('labels', input_format='float-nchw'))
    f = _frame(8)
    np.testing.assert_array_equal(seg.process([f])[0].labels, _label_fn(f))
    seg.update(drivable=DrivableConfig(groups=(('offroad', ('terrain',)),)))
    assert list(seg.process([f])[0].groups) == ['offroad']
    with pytest.raises(ConfigError, match='sand'):
        seg.update(drivable=DrivableConfig(groups=(('beach', ('sand',)),)))
    assert list(seg.process([f])[0].groups) == ['offroad']  # a bad update changes nothing
    with pytest.raises(FrameError):
        seg.process([np.zeros((10, 10), np.uint8)])
    assert seg.process([]) == []


def test_real_onnxruntime_session() -> None:
    ort = pytest.importorskip('onnxruntime')
    onnx = pytest.importorskip('onnx')
    from onnx import TensorProto, helper

    # labels = R >> 4 (uint8), computed by a real ONNX graph
    nodes = [
        helper.make_node('Slice', ['images', 's0', 's1', 'ax'], ['r4']),
        helper.make_node('Squeeze', ['r4', 'ax'], ['r']),
        helper.make_node('BitShift', ['r', 'four'], ['labels'], direction='RIGHT'),
    ]
    inits = [helper.make_tensor('s0', TensorProto.INT64, [1], [0]),
             helper.make_tensor('s1', TensorProto.INT64, [1], [1]),
             helper.make_tensor('ax', TensorProto.INT64, [1], [3]),
             helper.make_tensor('four', TensorProto.UINT8, [], [4])]
    graph = helper.make_graph(nodes, 'tiny', [helper.make_tensor_value_info('images', TensorProto.UINT8,
                                                                            ['N', *MODEL_HW, 3])],
                              [helper.make_tensor_value_info('labels', TensorProto.UINT8, ['N', *MODEL_HW])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=['CPUExecutionProvider'])

    class OrtBackend(FakeBackend):
        def infer(self, batch: np.ndarray) -> InferenceResult:
            return InferenceResult(labels=sess.run(['labels'], {'images': batch})[0])

    seg = _segmenter(OrtBackend('labels'))
    frames = [_frame(9), _frame(10)]
    for f, r in zip(frames, seg.process(frames), strict=True):
        np.testing.assert_array_equal(r.labels, f[..., 0] >> 4)


def test_every_engine_run_is_listed_whatever_the_split() -> None:
    """Four cameras through an engine of max batch 2: two runs of two, each in ``runs`` (the engine diagnostics
    count runs from it), and the per-frame infer time is the time of the frame's own run."""
    backend = FakeBackend('labels', max_batch=2)
    seg = Segmenter(backend, input_cfg=InputConfig(height=MODEL_HW[0], width=MODEL_HW[1]), outputs=OutputConfig(),
                    drivable=DrivableConfig(), dataset=CITYSCAPES)
    frames = [_frame(i) for i in range(4)]
    results = seg.run_labels(frames)
    assert [n for n, _, _ in seg.runs] == [2, 2] and len(backend.calls) == 2
    assert [r.timings_ms['infer'] for r in results] == [seg.runs[0][2]] * 2 + [seg.runs[1][2]] * 2
    seg.run_labels(frames[:3])
    assert [n for n, _, _ in seg.runs] == [2, 1]


def test_keyed_buffers_follow_the_camera_not_its_position() -> None:
    """A node running its cameras one per call keeps each camera's output buffers (no reallocation per frame)."""
    seg = Segmenter(FakeBackend('labels'), input_cfg=InputConfig(height=MODEL_HW[0], width=MODEL_HW[1]),
                    outputs=OutputConfig(), drivable=DrivableConfig(), dataset=CITYSCAPES)
    small = _frame(1)[:64, :96].copy()
    a = seg.run_labels([_frame(0)], keys=['front'])[0].labels
    b = seg.run_labels([small], keys=['rear'])[0].labels
    a2 = seg.run_labels([_frame(2)], keys=['front'])[0].labels
    assert a2 is a and b.shape == small.shape[:2]            # front's buffer survived rear's other size
    with pytest.raises(FrameError):
        seg.run_labels([_frame(0)], keys=['front', 'rear'])
