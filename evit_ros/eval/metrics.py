"""Segmentation and latency metrics (numpy only), accumulated over a whole run.

mIoU follows the official Cityscapes protocol: pixels whose ground truth is the ignore id (255, or any id
>= ``num_classes``) are excluded, and intersections and unions are summed over the dataset before dividing
(one confusion matrix for the run, never a mean of per-image IoUs).

Classes absent from both ground truth and prediction have IoU 0/0. The official script yields NaN for them
and averages with ``nanmean``; we report both numbers, clearly named:

* ``miou_present``: mean over classes whose union > 0 (what the official script prints);
* ``miou_19``: mean over all classes with absent classes counted as 0 (a strict lower bound, equal to
  ``miou_present`` when every class occurs, as on the full Cityscapes val set).
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
            'miou_19': _num(float(np.nan_to_num(iou, nan=0.0).mean())),
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
    """Per-stage latency samples with bounded memory: a fixed-size reservoir per stage plus exact count/mean/max."""

    def __init__(self, capacity: int = 20000, seed: int = 0) -> None:
        self.capacity = int(capacity)
        self._rng = np.random.default_rng(seed)
        self._samples: dict[str, list[float]] = {}
        self._count: dict[str, int] = {}
        self._sum: dict[str, float] = {}
        self._max: dict[str, float] = {}

    def add(self, stage: str, ms: float) -> None:
        n = self._count.get(stage, 0) + 1
        self._count[stage] = n
        self._sum[stage] = self._sum.get(stage, 0.0) + ms
        self._max[stage] = max(self._max.get(stage, ms), ms)
        buf = self._samples.setdefault(stage, [])
        if len(buf) < self.capacity:
            buf.append(float(ms))
        else:
            j = int(self._rng.integers(0, n))
            if j < self.capacity:
                buf[j] = float(ms)

    def add_all(self, timings: dict[str, float]) -> None:
        for k, v in timings.items():
            self.add(k, float(v))

    def merge(self, other: LatencyStats) -> None:
        for stage, buf in other._samples.items():
            for v in buf:
                if len(self._samples.setdefault(stage, [])) < self.capacity:
                    self._samples[stage].append(v)
            self._count[stage] = self._count.get(stage, 0) + other._count[stage]
            self._sum[stage] = self._sum.get(stage, 0.0) + other._sum[stage]
            self._max[stage] = max(self._max.get(stage, other._max[stage]), other._max[stage])

    def samples(self, stage: str) -> np.ndarray:
        return np.asarray(self._samples.get(stage, []), dtype=np.float64)

    @property
    def stages(self) -> list[str]:
        return list(self._samples)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage in self._samples:
            s = self.samples(stage)
            p50, p90, p99 = (float(np.percentile(s, q)) for q in (50, 90, 99))
            out[stage] = {'count': self._count[stage], 'mean': round(self._sum[stage] / self._count[stage], 3),
                          'p50': round(p50, 3), 'p90': round(p90, 3), 'p99': round(p99, 3),
                          'max': round(self._max[stage], 3)}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {'samples': self._samples, 'count': self._count, 'sum': self._sum, 'max': self._max}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyStats:
        s = cls()
        s._samples = {k: list(v) for k, v in d['samples'].items()}
        s._count = dict(d['count'])
        s._sum = dict(d['sum'])
        s._max = dict(d['max'])
        return s
