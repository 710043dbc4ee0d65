"""Drivable-area products from a label map: per-group binary masks, class fractions (whole image and a region
of interest) and the per-column free-space boundary. All lookups are 256-entry tables and histograms, so
the cost is a few passes over the frame regardless of the number of classes.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from evit_ros.datasets import DatasetInfo
from evit_ros.errors import ConfigError


@dataclass(frozen=True)
class ClassGroup:
    name: str
    class_ids: tuple[int, ...]
    lut: np.ndarray  # uint8 [256]: 255 for member class ids, 0 otherwise

    def mask(self, labels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """0/255 uint8 mask of the pixels whose class is in the group (255 = ignore is never a member)."""
        if out is None:
            return cv2.LUT(labels, self.lut)
        res = cv2.LUT(labels, self.lut, dst=out)
        if not np.shares_memory(res, out):
            np.copyto(out, res)
        return out


class ClassGroups:
    """Named class groups, e.g. ``drivable: [road]``, ``walkable: [sidewalk]``."""

    def __init__(self, groups: Sequence[ClassGroup]) -> None:
        self.groups = tuple(groups)

    def __iter__(self) -> Iterator[ClassGroup]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    @classmethod
    def from_names(cls, groups: Sequence[tuple[str, Sequence[str]]], dataset: DatasetInfo) -> ClassGroups:
        """Resolve class names (case-insensitive, '_' for ' ') to ids; unknown names raise ConfigError."""
        out = []
        for name, classes in groups:
            ids = []
            for c in classes:
                try:
                    ids.append(dataset.class_id(c))
                except ConfigError as exc:
                    raise ConfigError(f'drivable group {name!r}: {exc}') from None
            lut = np.zeros(256, np.uint8)
            lut[ids] = 255
            out.append(ClassGroup(str(name), tuple(ids), lut))
        return cls(out)


def class_counts(labels: np.ndarray) -> np.ndarray:
    """Pixel count of every uint8 value (256 bins), via ``cv2.calcHist`` (exact below 2**24 pixels) or bincount."""
    if labels.size < (1 << 24) and labels.dtype == np.uint8:
        return cv2.calcHist([labels], [0], None, [256], [0, 256]).reshape(256).astype(np.int64)
    return np.bincount(labels.reshape(-1), minlength=256)[:256]


def class_fractions(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of all pixels (ignore included in the denominator) per class id ``0..num_classes-1``."""
    if labels.size == 0:
        return np.zeros(num_classes, np.float64)
    return class_counts(labels)[:num_classes] / float(labels.size)


class RoiMask:
    """A region of interest given as a normalized (x, y) polygon, rasterized once per image size (cached)."""

    def __init__(self, polygon: Sequence[tuple[float, float]]) -> None:
        if polygon and len(polygon) < 3:
            raise ConfigError(f'ROI polygon has {len(polygon)} points; give at least 3 or none')
        self.polygon = tuple((float(x), float(y)) for x, y in polygon)
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, int]] = {}

    def masks(self, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int]:
        """(inside 0/255, outside 0/255, inside pixel count) for an image of ``hw``; the full image if no polygon."""
        key = (int(hw[0]), int(hw[1]))
        hit = self._cache.get(key)
        if hit is None:
            h, w = key
            inside = np.zeros(key, np.uint8)
            if self.polygon:
                pts = np.array([[x * w, y * h] for x, y in self.polygon], np.float64)
                # fixed point (4 fractional bits) keeps sub-pixel vertices
                cv2.fillPoly(inside, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_8, 4)
            else:
                inside[:] = 255
            if len(self._cache) > 16:
                self._cache.clear()
            hit = self._cache[key] = (inside, cv2.bitwise_not(inside), int(cv2.countNonZero(inside)))
        return hit

    def retain(self, sizes: set[tuple[int, int]]) -> None:
        """Forget the masks of every other image size (an outlier frame's masks must not stay for good)."""
        for key in [k for k in self._cache if k not in sizes]:
            del self._cache[key]

    def fraction(self, group_mask: np.ndarray, scratch: np.ndarray | None = None) -> float:
        """Share of the ROI's pixels that are in the group (0.0 for an empty ROI)."""
        inside, _, count = self.masks(group_mask.shape[:2])
        if count == 0:
            return 0.0
        both = cv2.bitwise_and(group_mask, inside, dst=scratch)
        return cv2.countNonZero(both) / count

    def class_fractions(self, labels: np.ndarray, num_classes: int, scratch: np.ndarray | None = None) -> np.ndarray:
        """Per-class share of the ROI's pixels (pixels outside are mapped to 255 and not counted)."""
        _, outside, count = self.masks(labels.shape[:2])
        if count == 0:
            return np.zeros(num_classes, np.float64)
        merged = cv2.bitwise_or(labels, outside, dst=scratch)
        return class_counts(merged)[:num_classes] / float(count)


def group_fraction(group_mask: np.ndarray) -> float:
    """Share of the image's pixels in the group."""
    return cv2.countNonZero(group_mask) / float(group_mask.size) if group_mask.size else 0.0


def freespace_boundary(group_mask: np.ndarray,
                       scratch: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Per column, the smallest row r such that rows r..H-1 are all in the group (H if the bottom pixel is not).

    int32 ``[W]``. Vectorized: the last non-group row per column is a max-reduction of (row+1) weights.
    ``scratch`` = (bool ``[H, W]``, uint16 ``[H, W]``) avoids temporary allocations in hot loops.
    """
    h, w = group_mask.shape[:2]
    if h >= 65535:
        raise ConfigError(f'mask height {h} is too large for the boundary computation (max 65534 rows)')
    if scratch is None or scratch[0].shape != (h, w) or scratch[1].shape != (h, w):
        scratch = (np.empty((h, w), np.bool_), np.empty((h, w), np.uint16))
    not_in, weights = scratch
    np.equal(group_mask, 0, out=not_in)
    np.multiply(not_in, _row_weights(h), out=weights)
    return weights.max(axis=0).astype(np.int32)


_ROW_WEIGHTS: dict[int, np.ndarray] = {}


def _row_weights(h: int) -> np.ndarray:
    r = _ROW_WEIGHTS.get(h)
    if r is None:
        if len(_ROW_WEIGHTS) > 16:
            _ROW_WEIGHTS.clear()
        r = _ROW_WEIGHTS[h] = np.arange(1, h + 1, dtype=np.uint16)[:, None]
    return r
