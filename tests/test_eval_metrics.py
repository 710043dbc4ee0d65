"""Metric arithmetic against hand-counted values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from evit_ros.errors import DataError
from evit_ros.eval.metrics import ConfusionMatrix, LatencyStats


def test_iou_counts_by_hand_with_ignore() -> None:
    gt = np.array([[0, 0, 1, 1], [2, 255, 1, 0]], np.uint8)
    pr = np.array([[0, 1, 1, 1], [2, 0, 0, 0]], np.uint8)
    cm = ConfusionMatrix(4)
    assert cm.update(gt, pr) == 7            # the ignored pixel is not counted
    # class 0: gt at (0,0),(0,1),(1,3); pred at (0,0),(1,2),(1,3) -> I=2, U=4
    # class 1: gt at (0,2),(0,3),(1,2); pred at (0,1),(0,2),(0,3) -> I=2, U=4
    # class 2: I=1, U=1; class 3: absent -> NaN
    iou = cm.iou()
    assert iou[:3].tolist() == [0.5, 0.5, 1.0] and math.isnan(iou[3])
    s = cm.summary(['a', 'b', 'c', 'd'], [('ab', [0, 1])])
    assert s['miou_present'] == pytest.approx(2.0 / 3.0, abs=1e-6)
    assert s['miou_19'] == pytest.approx(2.0 / 4.0, abs=1e-6)
    assert s['pixel_accuracy'] == pytest.approx(5 / 7, abs=1e-6)
    # group {0,1}: gt in group 6 px, pred in group 6 px, both in group 6 -> 1.0
    assert s['groups']['ab'] == 1.0
    assert s['per_class'][3]['iou'] is None


def test_summed_over_dataset_not_mean_of_images() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.zeros((1, 4), np.uint8), np.array([[0, 0, 0, 1]], np.uint8))   # class0 I=3 U=4
    cm.update(np.zeros((1, 1), np.uint8), np.array([[1]], np.uint8))           # class0 I=0 U=1
    assert cm.iou()[0] == pytest.approx(3 / 5)      # (3+0)/(4+1), not mean(0.75, 0)


def test_prediction_outside_classes_counts_against_gt_class() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.array([[0, 0]], np.uint8), np.array([[0, 255]], np.uint8))
    assert cm.iou()[0] == 0.5 and cm.pixel_accuracy() == 0.5


def test_merge_and_roundtrip_equal_single_pass() -> None:
    rng = np.random.default_rng(1)
    gts = [rng.integers(0, 5, (8, 8)).astype(np.uint8) for _ in range(4)]
    prs = [rng.integers(0, 5, (8, 8)).astype(np.uint8) for _ in range(4)]
    one, a, b = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    for g, p in zip(gts, prs, strict=True):
        one.update(g, p)
    for g, p in zip(gts[:2], prs[:2], strict=True):
        a.update(g, p)
    for g, p in zip(gts[2:], prs[2:], strict=True):
        b.update(g, p)
    a.merge(ConfusionMatrix.from_dict(b.to_dict()))
    assert np.array_equal(a.matrix, one.matrix)
    assert a.matrix.sum() == 4 * 64


def test_shape_mismatch_and_bad_group_raise() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(DataError, match='shape'):
        cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(DataError, match='group'):
        cm.group_iou([7])


def test_latency_histogram_percentiles_resolution_and_exact_merge() -> None:
    rng = np.random.default_rng(3)
    values = np.round(rng.lognormal(2.0, 1.0, 5000), 3)        # ms, 1 us resolution as stored
    whole = LatencyStats()
    parts = [LatencyStats() for _ in range(7)]
    for i, v in enumerate(values):
        whole.add('infer', float(v))
        parts[i % 7].add('infer', float(v))
    merged = LatencyStats()
    for p in reversed(parts):                                   # any order, any split: the same integers
        merged.merge(p)
    assert merged == whole and merged.summary() == whole.summary()
    s = whole.summary()['infer']
    assert s['count'] == 5000 and s['max'] == pytest.approx(values.max(), abs=1e-9)
    assert s['mean'] == pytest.approx(values.mean(), abs=1e-3)
    for q in (50, 90, 99):
        exact = np.sort(values)[int(np.ceil(q / 100 * values.size)) - 1]
        assert s[f'p{q}'] == pytest.approx(exact, rel=0.0045, abs=0.001)
    small = LatencyStats()
    for v in (1.0, 2.0, 3.0, 4.0):
        small.add('x', v)
    assert small.summary()['x']['p50'] == pytest.approx(2.0, rel=0.004)
    assert LatencyStats.from_dict(whole.to_dict()) == whole
    assert len(whole.to_dict()['bins']['infer']) < 1200          # bounded: bins, not samples
