"""Scoring shared by every way of running an evaluation: what to read, what was counted, and the event loop.

The local runner (:mod:`evit_ros.eval.runner`), the shard function (:mod:`evit_ros.eval.shards`, also what
Ray and ``--jobs`` workers run) and the live bag player (:mod:`evit_ros.ros.bag_player`) all score through
:class:`Scorer` and :func:`feed_events`, so a frame counts the same way whichever runs it. Predictions wait
in a bounded per-camera window keyed by header stamp for their label (and labels for their image), so
memory stays constant on long bags; an image whose label never arrives counts for latency only.
"""
from __future__ import annotations

import logging
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.datasets import IGNORE_ID, cityscapes_label_lut
from evit_ros.errors import ConfigError, FrameError
from evit_ros.eval.bag_reader import ReadLimits
from evit_ros.eval.bags import IMAGE, BagEvent, BagWriter, camera_name
from evit_ros.eval.metrics import ConfusionMatrix, LatencyStats

LOG = logging.getLogger('evit_ros.eval')
LABEL_FORMATS = ('trainid', 'labelid')
LABELID_MAX = 33   # Cityscapes labelIds are 0..33 (255 is accepted as void in both formats)
SAMPLE_WIDTH = 320

@dataclass(frozen=True)
class EvalSpec:
    """What to read and how to score it (picklable: sent to ``--jobs`` worker processes)."""

    image_topics: tuple[str, ...]
    label_topics: tuple[str, ...] = ()
    labels_dir: str = ''
    label_format: str = 'trainid'
    max_frames: int = 0
    out_bag: str = ''
    window: int = 64
    samples: int = 8
    progress: bool = True
    save_predictions: str = ''
    read_limits: ReadLimits = ReadLimits()   # decompression and temp-disk caps of bag reading

    def __post_init__(self) -> None:
        if not self.image_topics:
            raise ConfigError('no --image-topic given; name at least one sensor_msgs/Image or CompressedImage topic')
        if self.label_format not in LABEL_FORMATS:
            raise ConfigError(f'--label-format {self.label_format!r} is not valid; use trainid or labelid')
        if self.label_topics and self.labels_dir:
            raise ConfigError('give either --label-topic or --labels-dir, not both')
        if self.label_topics and len(self.label_topics) != len(self.image_topics):
            raise ConfigError(f'{len(self.label_topics)} --label-topic for {len(self.image_topics)} --image-topic; '
                              'give one label topic per image topic, in the same order')
        if self.window < 1 or self.max_frames < 0:
            raise ConfigError(f'window={self.window} must be >= 1 and max_frames={self.max_frames} >= 0')

    def camera_of(self, topic: str) -> str:
        return camera_name(topic)


@dataclass
class EvalState:
    """Everything a run accumulates; mergeable across bags and processes."""

    num_classes: int
    cm: ConfusionMatrix = field(init=False)
    per_camera: dict[str, ConfusionMatrix] = field(default_factory=dict)
    latency: LatencyStats = field(default_factory=LatencyStats)
    counters: Counter = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    sources: list[str] = field(default_factory=list)
    failed_sources: dict[str, str] = field(default_factory=dict)   # source -> one-line reason
    shards: dict[str, Any] = field(default_factory=dict)   # how a bag run was sharded, retried, what failed

    def __post_init__(self) -> None:
        self.cm = ConfusionMatrix(self.num_classes)

    def camera_cm(self, cam: str) -> ConfusionMatrix:
        if cam not in self.per_camera:
            self.per_camera[cam] = ConfusionMatrix(self.num_classes)
        return self.per_camera[cam]

    def merge(self, other: EvalState) -> None:
        self.cm.merge(other.cm)
        for cam, cm in other.per_camera.items():
            self.camera_cm(cam).merge(cm)
        self.latency.merge(other.latency)
        self.counters.update(other.counters)
        self.samples.extend(other.samples)
        self.interrupted |= other.interrupted
        self.sources.extend(other.sources)
        self.failed_sources.update(other.failed_sources)

    def to_dict(self) -> dict[str, Any]:
        return {'num_classes': self.num_classes, 'cm': self.cm.to_dict(),
                'per_camera': {k: v.to_dict() for k, v in self.per_camera.items()},
                'latency': self.latency.to_dict(), 'counters': dict(self.counters), 'samples': self.samples,
                'interrupted': self.interrupted, 'sources': self.sources, 'failed_sources': self.failed_sources,
                'shards': self.shards}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalState:
        s = cls(d['num_classes'])
        s.cm = ConfusionMatrix.from_dict(d['cm'])
        s.per_camera = {k: ConfusionMatrix.from_dict(v) for k, v in d['per_camera'].items()}
        s.latency = LatencyStats.from_dict(d['latency'])
        s.counters = Counter(d['counters'])
        s.samples = list(d['samples'])
        s.interrupted = bool(d['interrupted'])
        s.sources = list(d['sources'])
        s.failed_sources = dict(d.get('failed_sources', {}))
        s.shards = dict(d.get('shards', {}))
        return s


class Progress:
    """A dependency-free progress line on stderr (rewritten in place on a terminal, every 5 s otherwise)."""

    def __init__(self, label: str, total: int, enabled: bool = True) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.start = self._last = time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.25 if self.tty else 5.0):
            return
        self._last = now
        rate = done / max(now - self.start, 1e-9)
        tot = f'/{self.total}' if self.total else ''
        pct = f' {100.0 * done / self.total:5.1f}%' if self.total else ''
        line = f'{self.label}: {done}{tot} frames{pct} {rate:.1f} fps'
        sys.stderr.write(('\r' + line) if self.tty else line + '\n')
        sys.stderr.flush()

    def close(self, done: int) -> None:
        self.update(done, force=True)
        if self.enabled and self.tty:
            sys.stderr.write('\n')


class Scorer:
    """Per-source loop state: pending windows, out-bag, samples reservoir."""

    def __init__(self, state: EvalState, spec: EvalSpec, segmenter: Any, out_bag: str, source: str,
                 palette: np.ndarray) -> None:
        self.state, self.spec, self.seg = state, spec, segmenter
        self.source = source
        self.palette = palette
        self.pending_pred: dict[str, OrderedDict[int, np.ndarray]] = {}
        self.pending_gt: dict[str, OrderedDict[int, np.ndarray]] = {}
        self.writer = BagWriter(out_bag) if out_bag else None
        self.lut = np.asarray(cityscapes_label_lut(), dtype=np.uint8)
        self.rng = np.random.default_rng(0)
        self.frames = 0
        self.labels_owned = 0     # good label messages this source owns (feed_events counts them)
        self.cityscapes = False
        self.predictions: Any = None
        if spec.save_predictions:
            from evit_ros.eval.predictions import PredictionWriter
            self.predictions = PredictionWriter(spec.save_predictions, spec.label_format)
        self.sample_waiting: dict[tuple[str, int], int] = {}   # (camera, stamp) -> sample index awaiting its GT

    # labels
    def prepare_label(self, label: np.ndarray, label_format: str) -> np.ndarray:
        """trainIds of a label; values outside the format are counted (``bad_label_values``) and ignored."""
        limit = LABELID_MAX if label_format == 'labelid' else self.state.num_classes - 1
        outside = (label > limit) & (label != IGNORE_ID)
        if outside.any():
            self.state.counters['bad_label_values'] += 1
            label = np.where(outside, IGNORE_ID, label).astype(np.uint8)
        return self.lut[label] if label_format == 'labelid' else label

    def score(self, cam: str, stamp: int, pred: np.ndarray, gt: np.ndarray) -> None:
        c = self.state.counters
        if gt.shape != pred.shape:
            c['bad_label_size'] += 1
            LOG.debug('label %dx%d (HxW) for %s@%d differs from the image size %dx%d', gt.shape[0], gt.shape[1],
                      cam, stamp, pred.shape[0], pred.shape[1])
            return
        self.state.cm.update(gt, pred)
        self.state.camera_cm(cam).update(gt, pred)
        c['frames_scored'] += 1
        slot = self.sample_waiting.pop((cam, stamp), None)
        if slot is not None and slot < len(self.state.samples):
            self.state.samples[slot]['gt'] = _small(self.palette[gt], SAMPLE_WIDTH).tobytes()

    def on_label(self, cam: str, stamp: int, gt: np.ndarray) -> None:
        preds = self.pending_pred.setdefault(cam, OrderedDict())
        if stamp in preds:
            self.score(cam, stamp, preds.pop(stamp), gt)
            return
        gts = self.pending_gt.setdefault(cam, OrderedDict())
        gts[stamp] = gt.copy()
        while len(gts) > self.spec.window:
            gts.popitem(last=False)
            self.state.counters['labels_without_image'] += 1

    def on_prediction(self, cam: str, stamp: int, pred: np.ndarray) -> None:
        gts = self.pending_gt.setdefault(cam, OrderedDict())
        if stamp in gts:
            self.score(cam, stamp, pred, gts.pop(stamp))
            return
        preds = self.pending_pred.setdefault(cam, OrderedDict())
        preds[stamp] = pred.copy()
        while len(preds) > self.spec.window:
            preds.popitem(last=False)
            self.state.counters['frames_without_gt'] += 1

    def flush(self) -> None:
        """End of a source (also after Ctrl-C): count what never matched and move the out-bag into place."""
        for preds in self.pending_pred.values():
            self.state.counters['frames_without_gt'] += len(preds)
            preds.clear()
        for gts in self.pending_gt.values():
            self.state.counters['labels_without_image'] += len(gts)
            gts.clear()
        if self.writer:
            self.writer.close()

    def abort(self) -> None:
        """A failed source: its unfinished out-bag is removed, nothing is left at the final path."""
        if self.writer:
            self.writer.abort()

    def _take_sample(self) -> int:
        """Reservoir slot for the current frame (-1: not sampled); decided before inference so overlays are cheap."""
        k = self.spec.samples
        n = self.frames
        if k <= 0:
            return -1
        if n < k:
            return n
        j = int(self.rng.integers(0, n + 1))
        return j if j < k else -1

    def on_image(self, ev: BagEvent, cam: str, rgb: np.ndarray, gt: np.ndarray | None = None) -> None:
        slot = self._take_sample()
        want_vis = self.writer is not None or slot >= 0
        t0 = time.perf_counter()
        try:
            result = self.seg.process([rgb], want_color=want_vis, want_overlay=want_vis, want_confidence=False)[0]
        except FrameError as exc:   # a decoded frame the pipeline rejects (e.g. too small): counted, not fatal
            self.state.counters[f'bad_image_{exc.reason}'] += 1
            return
        total = (time.perf_counter() - t0) * 1000.0
        timings = {'decode': ev.decode_ms, **{k: float(v) for k, v in result.timings_ms.items()},
                   'total': total + ev.decode_ms}
        self.state.latency.add_all(timings)
        self.state.counters['frames'] += 1
        labels = np.asarray(result.labels)
        if self.writer is not None:
            self._write(cam, ev, labels, result)
        if slot >= 0:
            self._sample(slot, cam, ev.stamp_ns, rgb, labels, gt)
        if self.predictions is not None:
            self.predictions.write(labels, cam, ev.stamp_ns, ev.frame_id, cityscapes=self.cityscapes)
        self.frames += 1
        if gt is not None:
            self.score(cam, ev.stamp_ns, labels, gt)
        elif self.spec.labels_dir:
            path = _label_path(self.spec.labels_dir, cam, ev.stamp_ns)
            if path is None:
                self.state.counters['frames_without_gt'] += 1
            else:
                label = _read_label_png(path, self.state.counters)
                if label is not None:
                    self.score(cam, ev.stamp_ns, labels, self.prepare_label(label, self.spec.label_format))
        elif self.spec.label_topics:
            self.on_prediction(cam, ev.stamp_ns, labels)
        else:
            self.state.counters['frames_without_gt'] += 1

    def _visuals(self, result: Any, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        color = result.color if result.color is not None else self.palette[labels]
        return np.asarray(color), (np.asarray(result.overlay) if result.overlay is not None else None)

    def _write(self, cam: str, ev: BagEvent, labels: np.ndarray, result: Any) -> None:
        if self.writer is None:
            return
        f = self.writer.factory
        color, overlay = self._visuals(result, labels)
        base = f'/segmentation/{cam}'
        log_ns = ev.log_ns or ev.stamp_ns
        self.writer.write(f'{base}/mask', IMAGE, f.image(labels, ev.stamp_ns, 'mono8', ev.frame_id), log_ns)
        self.writer.write(f'{base}/color_mask', IMAGE, f.image(color, ev.stamp_ns, 'rgb8', ev.frame_id), log_ns)
        if overlay is not None:
            self.writer.write(f'{base}/overlay', IMAGE, f.image(overlay, ev.stamp_ns, 'rgb8', ev.frame_id), log_ns)

    def _sample(self, slot: int, cam: str, stamp: int, rgb: np.ndarray, labels: np.ndarray,
                gt: np.ndarray | None = None) -> None:
        """Reservoir entry: the camera image, its ground truth (filled when it arrives) and the prediction."""
        if gt is None and cam in self.pending_gt:
            gt = self.pending_gt[cam].get(stamp)
        if rgb.shape[:2] != labels.shape[:2]:   # e.g. a live node publishing masks at the model resolution
            import cv2
            rgb = cv2.resize(np.ascontiguousarray(rgb), (labels.shape[1], labels.shape[0]),
                             interpolation=cv2.INTER_AREA)
        has_gt = gt is not None and gt.shape == labels.shape
        entry = {'source': self.source, 'camera': cam, 'stamp_ns': stamp, 'frame': self.frames,
                 'image': _small(rgb, SAMPLE_WIDTH).tobytes(),
                 'pred': _small(self.palette[labels], SAMPLE_WIDTH).tobytes(),
                 'gt': _small(self.palette[gt], SAMPLE_WIDTH).tobytes() if has_gt else None,
                 'shape': list(_small(labels, SAMPLE_WIDTH).shape[:2]) + [3]}
        samples = self.state.samples
        if slot < len(samples) and samples[slot].get('source') == self.source:
            samples[slot] = entry
        else:
            slot = len(samples)
            samples.append(entry)
        self.sample_waiting = {k: v for k, v in self.sample_waiting.items() if v != slot}
        if entry['gt'] is None:
            self.sample_waiting[(cam, stamp)] = slot


def _small(img: np.ndarray, width: int) -> np.ndarray:
    """``img`` scaled to at most ``width`` pixels wide (nearest for label maps, area for images)."""
    import cv2
    h, w = img.shape[:2]
    if w <= width:
        return np.ascontiguousarray(img)
    size = (width, max(1, round(h * width / w)))
    interp = cv2.INTER_AREA if img.ndim == 3 and img.dtype == np.uint8 and img.shape[2] == 3 else cv2.INTER_NEAREST
    return cv2.resize(np.ascontiguousarray(img), size, interpolation=interp)


def _label_path(root: str, cam: str, stamp: int) -> Path | None:
    """Label PNG of a frame: ``DIR/<camera>/<stamp_ns>.png`` first, then ``DIR/<stamp_ns>.png``."""
    for p in (Path(root) / cam / f'{stamp}.png', Path(root) / f'{stamp}.png'):
        if p.is_file():
            return p
    return None


def _read_label_png(path: Path, counters: Counter) -> np.ndarray | None:
    import cv2
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim != 2 or img.dtype != np.uint8:
        counters['bad_label_file'] += 1
        LOG.warning('label %s is not a single-channel 8-bit PNG; skipped', path)
        return None
    return img


def feed_events(events: Iterable[tuple[BagEvent, bool]], state: EvalState, spec: EvalSpec, scorer: Scorer,
                label_format: str, on_frame: Callable[[int], None]) -> None:
    """Hand each ``(event, owned)`` to ``scorer``: labels to ``on_label``, images to ``on_image``, bad ones
    counted (bad labels only when ``owned``: a shard reads past its end for labels it does not own; good
    owned labels go to ``scorer.labels_owned``). ``on_frame(frames)`` follows every image; stops at
    ``spec.max_frames``.
    """
    label_cam = {lt: spec.camera_of(it) for it, lt in zip(spec.image_topics, spec.label_topics, strict=False)}
    for ev, owned in events:
        if ev.topic in label_cam and ev.topic not in spec.image_topics:
            if ev.error or ev.data is None:
                if owned:
                    state.counters[f'bad_label_{ev.error}'.replace('bad_label_label_', 'bad_label_')] += 1
                continue
            scorer.labels_owned += owned
            scorer.on_label(label_cam[ev.topic], ev.stamp_ns, scorer.prepare_label(ev.data, label_format))
            continue
        if ev.error or ev.data is None:
            state.counters[f'bad_image_{ev.error or "empty"}'] += 1
            LOG.debug('bad image on %s: %s', ev.topic, ev.detail)
            continue
        scorer.on_image(ev, spec.camera_of(ev.topic), ev.data, ev.label)
        on_frame(scorer.frames)
        if spec.max_frames and scorer.frames >= spec.max_frames:
            break


def default_palette(n: int) -> np.ndarray:
    from evit_ros.datasets import CITYSCAPES_COLORS
    pal = np.zeros((256, 3), np.uint8)
    colors = CITYSCAPES_COLORS if n <= len(CITYSCAPES_COLORS) else [((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)
                                                                    for i in range(n)]
    pal[:len(colors)] = np.asarray(colors, np.uint8)[:256]
    return pal
