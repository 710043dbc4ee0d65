"""Class groups, fractions (whole image and ROI) and the free-space boundary against slow references."""
from __future__ import annotations

import numpy as np
import pytest

from evit_ros.datasets import CITYSCAPES
from evit_ros.errors import ConfigError
from evit_ros.pipeline.drivable import ClassGroups, RoiMask, class_fractions, freespace_boundary, group_fraction

RNG = np.random.default_rng(3)


def _slow_boundary(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    out = np.full(w, h)
    for c in range(w):
        r = h
        while r > 0 and mask[r - 1, c]:
            r -= 1
        out[c] = r
    return out


def test_groups_from_names_and_masks() -> None:
    groups = ClassGroups.from_names((('drivable', ('road',)), ('walkable', ('Sidewalk', 'traffic_light'))),
                                    CITYSCAPES)
    assert groups.names == ('drivable', 'walkable')
    labels = np.array([[0, 1, 6, 255], [2, 0, 1, 18]], np.uint8)
    d, wk = groups.groups
    np.testing.assert_array_equal(d.mask(labels), [[255, 0, 0, 0], [0, 255, 0, 0]])
    out = np.empty_like(labels)
    assert wk.mask(labels, out=out) is out
    np.testing.assert_array_equal(out, [[0, 255, 255, 0], [0, 0, 255, 0]])
    with pytest.raises(ConfigError, match='roadd.*valid classes: road, sidewalk'):
        ClassGroups.from_names((('drivable', ('roadd',)),), CITYSCAPES)


def test_class_fractions_match_slow_reference() -> None:
    labels = RNG.integers(0, 21, (37, 53), dtype=np.uint8)
    labels[labels == 20] = 255
    frac = class_fractions(labels, 19)
    ref = np.array([(labels == c).sum() for c in range(19)]) / labels.size
    np.testing.assert_allclose(frac, ref)
    assert frac.shape == (19,) and frac.sum() < 1.0  # 19 and 255 are counted in the denominator only


def test_roi_fractions() -> None:
    h, w = 40, 80
    labels = np.full((h, w), 2, np.uint8)
    labels[20:, :] = 0                      # road on the bottom half
    roi = RoiMask(((0.0, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0)))   # exactly the bottom half
    inside, outside, count = roi.masks((h, w))
    assert count == 20 * w and np.all(inside[20:] == 255) and np.all(inside[:20] == 0)
    assert roi.masks((h, w))[0] is inside  # cached per size
    road = ClassGroups.from_names((('drivable', ('road',)),), CITYSCAPES).groups[0].mask(labels)
    assert roi.fraction(road) == pytest.approx(1.0)
    assert group_fraction(road) == pytest.approx(0.5)
    labels[30:, :40] = 13
    np.testing.assert_allclose(roi.class_fractions(labels, 19)[[0, 2, 13]], [0.75, 0.0, 0.25])
    # triangle ROI vs a point-in-polygon reference at pixel centres (edge pixels may differ)
    tri = RoiMask(((0.1, 0.9), (0.5, 0.1), (0.9, 0.9)))
    ins = tri.masks((h, w))[0] > 0
    yy, xx = np.mgrid[0:h, 0:w]
    u, v = (xx + 0.5) / w, (yy + 0.5) / h
    ref = (v <= 0.9) & (v >= 0.1 + 2 * np.abs(u - 0.5))  # edges of slope 0.8 / 0.4
    assert (ins != ref).mean() < 0.05
    assert RoiMask(()).masks((4, 5))[2] == 20


def test_freespace_boundary_hand_made() -> None:
    m = np.zeros((6, 5), np.uint8)
    m[3:, 0] = 255          # road from row 3 to the bottom -> 3
    m[:, 1] = 255           # whole column -> 0
    m[:5, 2] = 255          # bottom pixel not road -> H
    m[1:, 3] = 255
    m[2, 3] = 0             # a hole: the run from the bottom starts at row 3
    np.testing.assert_array_equal(freespace_boundary(m), [3, 0, 6, 3, 6])


def test_freespace_boundary_random_vs_reference() -> None:
    for _ in range(5):
        m = (RNG.random((50, 70)) < 0.9).astype(np.uint8) * 255
        scratch = (np.empty((50, 70), bool), np.empty((50, 70), np.uint16))
        b = freespace_boundary(m, scratch=scratch)
        assert b.dtype == np.int32
        np.testing.assert_array_equal(b, _slow_boundary(m))
