"""Segmentation and latency metrics (numpy only), accumulated over a whole run.

mIoU follows the official Cityscapes protocol: pixels whose ground truth is the ignore id (255, or any id
>= ``num_classes``) are excluded, and intersections and unions are summed over the dataset before dividing
(one confusion matrix for the run, never a mean of per-image IoUs).

Classes absent from both ground truth and prediction have IoU 0/0. The official script yields NaN for them
and averages with ``nanmean``; we report both numbers, clearly named:

* ``miou_present``: mean over classes whose union > 0 (what the official script prints);
* ``miou_19``: mean over all classes with absent classes counted as 0 (a strict lower bound, equal to
  ``miou_present`` when every class occurs, as on the full Cityscapes val set); undefined (None) when no
  pixel was scored, like the others: an empty run has no mIoU, not 0.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from evit_ros.errors import DataError

IGNORE_ID = 255


class ConfusionMatrix:
    """``n x n`` int64 counts, rows = ground truth, columns = prediction, over valid pixels only."""

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1 or num_classes > 254:
            raise DataError(f'num_classes={num_classes} must be in [1, 254]')
        self.n = int(num_classes)
        self.matrix = np.zeros((self.n, self.n), dtype=np.int64)
        # GT pixels predicted as ignore/out-of-range: they enlarge their class's union only.
        self._unassigned = np.zeros(self.n, dtype=np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> int:
        """Add one frame; returns the number of valid (non-ignored) pixels counted."""
        if gt.shape != pred.shape:
            raise DataError(f'label shape {gt.shape} differs from prediction shape {pred.shape}; '
                            'resize the prediction to the label size first')
        g = gt.reshape(-1).astype(np.int64, copy=False)
        p = pred.reshape(-1).astype(np.int64, copy=False)
        valid = (g < self.n) & (g >= 0)
        # Predictions outside [0, n) (e.g. 255 from a pipeline that ignores pixels) count as wrong for every
        # class: they are mapped to no column, so they add to the GT row's union but not to any intersection.
        pv = p[valid]
        gv = g[valid]
        inside = (pv >= 0) & (pv < self.n)
        self.matrix += np.bincount(self.n * gv[inside] + pv[inside],
                                   minlength=self.n * self.n).reshape(self.n, self.n)
        outside = gv[~inside]
        if outside.size:
            self._unassigned += np.bincount(outside, minlength=self.n)
        return int(gv.size)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another run's counts (``--jobs``)."""
        if other.n != self.n:
            raise DataError(f'cannot merge confusion matrices of {other.n} and {self.n} classes')
        self.matrix += other.matrix
        self._unassigned += other._unassigned

    def to_dict(self) -> dict[str, Any]:
        return {'matrix': self.matrix.tolist(), 'unassigned': self._unassigned.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConfusionMatrix:
        m = np.asarray(d['matrix'], dtype=np.int64)
        cm = cls(m.shape[0])
        cm.matrix += m
        cm._unassigned += np.asarray(d.get('unassigned', np.zeros(m.shape[0])), dtype=np.int64)
        return cm

    # -- derived metrics ------------------------------------------------------------------------------
    def intersections_unions(self) -> tuple[np.ndarray, np.ndarray]:
        inter = np.diag(self.matrix).astype(np.float64)
        gt_total = self.matrix.sum(axis=1) + self._unassigned
        union = gt_total + self.matrix.sum(axis=0) - np.diag(self.matrix)
        return inter, union.astype(np.float64)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN where union == 0 (class absent from both GT and prediction)."""
        inter, union = self.intersections_unions()
        with np.errstate(divide='ignore', invalid='ignore'):
            return np.where(union > 0, inter / np.maximum(union, 1), np.nan)

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum() + self._unassigned.sum()
        return float(np.trace(self.matrix) / total) if total else float('nan')

    def group_iou(self, class_ids: Sequence[int]) -> float:
        """IoU of a class group: a pixel is in the group when its class is a member (GT and prediction alike)."""
        ids = np.asarray(sorted(set(int(c) for c in class_ids)), dtype=np.int64)
        if ids.size == 0 or ids.min() < 0 or ids.max() >= self.n:
            raise DataError(f'group class ids {list(class_ids)} must be non-empty and in [0, {self.n})')
        inter = float(self.matrix[np.ix_(ids, ids)].sum())
        gt_in = float(self.matrix[ids, :].sum() + self._unassigned[ids].sum())
        pred_in = float(self.matrix[:, ids].sum())
        union = gt_in + pred_in - inter
        return inter / union if union > 0 else float('nan')

    def summary(self, class_names: Sequence[str], groups: Iterable[tuple[str, Sequence[int]]] = ()) -> dict[str, Any]:
        """Every accuracy number of the report; IoUs as fractions in [0, 1] (None where undefined)."""
        iou = self.iou()
        present = ~np.isnan(iou)
        inter, union = self.intersections_unions()
        return {
            'num_classes': self.n,
            'valid_pixels': int(self.matrix.sum() + self._unassigned.sum()),
            'pixel_accuracy': _num(self.pixel_accuracy()),
            'miou_present': _num(float(iou[present].mean()) if present.any() else float('nan')),
            'miou_19': _num(float(np.nan_to_num(iou, nan=0.0).mean()) if present.any() else float('nan')),
            'classes_present': int(present.sum()),
            'per_class': [{'id': i, 'name': class_names[i] if i < len(class_names) else str(i),
                           'iou': _num(float(iou[i])), 'intersection': int(inter[i]), 'union': int(union[i]),
                           'gt_pixels': int(self.matrix[i].sum() + self._unassigned[i])}
                          for i in range(self.n)],
            'groups': {name: _num(self.group_iou(ids)) for name, ids in groups},
        }


def _num(v: float) -> float | None:
    return None if v != v else round(v, 6)


class LatencyStats:
    """Per-stage latency as integer microseconds in a fixed log-linear histogram: bounded memory, exact merge.

    Every sample is rounded to 1 us; count, sum and max are exact integers and each sample lands in a fixed
    bin (1 us wide below 256 us, above that 128 bins per power of two: bin width <= 1/128 of its value). So
    merging two runs' histograms adds integers and gives exactly the histogram of the combined run, whatever
    way the frames were split into shards or processes. Percentiles are read from the bins (nearest rank,
    bin midpoint, clamped to the exact min/max): within 0.4 % of the sample percentile.
    """

    SUB_BITS = 8   # 2**(SUB_BITS-1) = 128 bins per power of two above 2**SUB_BITS us

    def __init__(self) -> None:
        self._bins: dict[str, dict[int, int]] = {}
        self._count: dict[str, int] = {}
        self._sum_us: dict[str, int] = {}
        self._min_us: dict[str, int] = {}
        self._max_us: dict[str, int] = {}

    @classmethod
    def bin_of(cls, us: int) -> int:
        shift = max(0, us.bit_length() - cls.SUB_BITS)
        return (shift << cls.SUB_BITS) | (us >> shift)

    @classmethod
    def bin_range(cls, key: int) -> tuple[int, int]:
        """``[lo, hi)`` in microseconds of a bin key."""
        shift, m = key >> cls.SUB_BITS, key & ((1 << cls.SUB_BITS) - 1)
        return m << shift, (m + 1) << shift

    def add(self, stage: str, ms: float) -> None:
        us = max(0, int(round(float(ms) * 1000.0)))
        bins = self._bins.setdefault(stage, {})
        key = self.bin_of(us)
        bins[key] = bins.get(key, 0) + 1
        self._count[stage] = self._count.get(stage, 0) + 1
        self._sum_us[stage] = self._sum_us.get(stage, 0) + us
        self._min_us[stage] = min(self._min_us.get(stage, us), us)
        self._max_us[stage] = max(self._max_us.get(stage, us), us)

    def add_all(self, timings: dict[str, float]) -> None:
        for k, v in timings.items():
            self.add(k, float(v))

    def merge(self, other: LatencyStats) -> None:
        """Add another run's histograms (exact: integer sums)."""
        for stage, bins in other._bins.items():
            mine = self._bins.setdefault(stage, {})
            for key, n in bins.items():
                mine[key] = mine.get(key, 0) + n
            self._count[stage] = self._count.get(stage, 0) + other._count[stage]
            self._sum_us[stage] = self._sum_us.get(stage, 0) + other._sum_us[stage]
            self._min_us[stage] = min(self._min_us.get(stage, other._min_us[stage]), other._min_us[stage])
            self._max_us[stage] = max(self._max_us.get(stage, other._max_us[stage]), other._max_us[stage])

    def histogram(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """(bin midpoints in ms, counts) of a stage, sorted by value (for plots)."""
        bins = self._bins.get(stage, {})
        keys = sorted(bins)
        mids = [sum(self.bin_range(k)) / 2000.0 for k in keys]
        return np.asarray(mids, dtype=np.float64), np.asarray([bins[k] for k in keys], dtype=np.int64)

    def percentile(self, stage: str, q: float) -> float:
        """Nearest-rank percentile in ms from the bins (bin midpoint, clamped to the exact min and max)."""
        n = self._count.get(stage, 0)
        if not n:
            return float('nan')
        rank = max(1, int(np.ceil(q / 100.0 * n)))
        seen = 0
        bins = self._bins[stage]
        for key in sorted(bins):
            seen += bins[key]
            if seen >= rank:
                lo, hi = self.bin_range(key)
                mid = (lo + hi - 1) / 2.0
                return min(max(mid, self._min_us[stage]), self._max_us[stage]) / 1000.0
        return self._max_us[stage] / 1000.0

    @property
    def stages(self) -> list[str]:
        return list(self._bins)

    def count(self, stage: str) -> int:
        return self._count.get(stage, 0)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage in self._bins:
            n = self._count[stage]
            out[stage] = {'count': n, 'mean': round(self._sum_us[stage] / n / 1000.0, 3),
                          'p50': round(self.percentile(stage, 50), 3), 'p90': round(self.percentile(stage, 90), 3),
                          'p99': round(self.percentile(stage, 99), 3), 'max': round(self._max_us[stage] / 1000.0, 3)}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {'resolution': 'us; bins 1 us below 256 us, else 128 per power of two',
                'bins': {s: {str(k): v for k, v in b.items()} for s, b in self._bins.items()},
                'count': dict(self._count), 'sum_us': dict(self._sum_us), 'min_us': dict(self._min_us),
                'max_us': dict(self._max_us)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyStats:
        s = cls()
        s._bins = {st: {int(k): int(v) for k, v in b.items()} for st, b in d['bins'].items()}
        s._count = {k: int(v) for k, v in d['count'].items()}
        s._sum_us = {k: int(v) for k, v in d['sum_us'].items()}
        s._min_us = {k: int(v) for k, v in d['min_us'].items()}
        s._max_us = {k: int(v) for k, v in d['max_us'].items()}
        return s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LatencyStats) and self.to_dict() == other.to_dict()
