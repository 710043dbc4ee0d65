"""Scoring shared by every way of running an evaluation: what to read, what was counted, and the event loop.

The local runner (:mod:`evit_ros.eval.runner`), the shard function (:mod:`evit_ros.eval.shards`, also what
Ray and ``--jobs`` workers run) and the live bag player (:mod:`evit_ros.ros.bag_player`) all score through
:class:`Scorer` and :func:`feed_events`, so a frame counts the same way whichever runs it. Predictions wait
in a bounded per-camera window keyed by header stamp for their label (and labels for their image), so
memory stays constant on long bags; an image whose label never arrives counts for latency only.

A camera is its full image topic, named without collisions (:func:`camera_names`). Within a camera each image
is paired with at most one label and each label with at most one image: a header stamp repeated within the
last ``STAMP_MEMORY`` stamps of a camera (zero stamps included) is counted under ``duplicate_stamps`` and not
paired. Every processed image lands in exactly one bucket, so the counts add up:
``frames = frames_scored + frames_without_gt + frames_bad_gt + duplicate_image_stamps``.
"""
from __future__ import annotations

import functools
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
from evit_ros.eval.bags import IMAGE, BagEvent, BagWriter
from evit_ros.eval.metrics import ConfusionMatrix, LatencyStats

LOG = logging.getLogger('evit_ros.eval')
LABEL_FORMATS = ('trainid', 'labelid')
LABELID_MAX = 33   # Cityscapes labelIds are 0..33 (255 is accepted as void in both formats)
SAMPLE_WIDTH = 320
STAMP_MEMORY = 4096   # stamps remembered per camera and kind to find repeated stamps (bounded memory)
LABEL_WAIT_NS = 5_000_000_000   # --max-frames: how far (log time) to read on for the labels of the last frames
# trailing topic parts that name the image stream, not the camera: /stereo/left/image_raw -> stereo_left
IMAGE_TOPIC_SUFFIXES = frozenset({'image', 'image_raw', 'image_rect', 'image_rect_raw', 'image_color',
                                  'image_rect_color', 'image_mono', 'image_rect_mono', 'compressed', 'raw'})


def _clean(name: str) -> str:
    return ''.join(c if c.isalnum() or c == '_' else '_' for c in name)


@functools.lru_cache(maxsize=64)
def camera_names(topics: tuple[str, ...]) -> dict[str, str]:
    """A readable camera name per image topic, distinct for distinct topics.

    The topic without its image-stream suffix (``/stereo/left/image_raw`` -> ``stereo_left``, ``/front/image_raw``
    -> ``front``, a bare ``/image_raw`` -> ``image``); where two topics give one name, each of them the whole
    topic (``/cam/image_raw`` -> ``cam_image_raw``); a name still taken gets ``_2``, ``_3``, ... in topic order.
    """
    def short(t: str) -> str:
        parts = [p for p in t.split('/') if p]
        while len(parts) > 1 and parts[-1] in IMAGE_TOPIC_SUFFIXES:
            parts.pop()
        if len(parts) == 1 and parts[0] in IMAGE_TOPIC_SUFFIXES:
            parts = ['image']
        return _clean('_'.join(parts)) or 'image'

    unique = list(dict.fromkeys(topics))
    names = {t: short(t) for t in unique}
    counts = Counter(names.values())
    for t in unique:
        if counts[names[t]] > 1:
            names[t] = _clean('_'.join(p for p in t.split('/') if p)) or 'image'
    counts = Counter(names.values())
    taken = {n for n, c in counts.items() if c == 1}
    out: dict[str, str] = {}
    for t in unique:
        name = names[t]
        if counts[name] > 1:
            k = 2
            while f'{name}_{k}' in taken:
                k += 1
            if name in taken:
                name = f'{name}_{k}'
            taken.add(name)
        out[t] = name
    return out

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
        if len(set(self.image_topics)) != len(self.image_topics):
            raise ConfigError(f'--image-topic given twice ({", ".join(self.image_topics)}); name each camera once')
        if len(set(self.label_topics)) != len(self.label_topics):
            raise ConfigError(f'--label-topic given twice ({", ".join(self.label_topics)}); each camera needs its own '
                              'label topic')
        both = set(self.label_topics) & set(self.image_topics)
        if both:
            raise ConfigError(f'{sorted(both)[0]} is given as --image-topic and as --label-topic; labels need their '
                              'own topic')
        if self.window < 1 or self.max_frames < 0:
            raise ConfigError(f'window={self.window} must be >= 1 and max_frames={self.max_frames} >= 0')
        if self.samples < 0:
            raise ConfigError(f'--samples {self.samples} must be >= 0 (0: no samples.png overlays)')

    def camera_of(self, topic: str) -> str:
        """The camera of an image topic (one per full topic: ``/stereo/left/image_raw`` -> ``stereo_left``)."""
        names = camera_names(self.image_topics)
        return names.get(topic) or camera_names((*self.image_topics, topic))[topic]

    def label_cameras(self) -> dict[str, str]:
        """label topic -> the camera of the image topic it is paired with (given in the same order)."""
        return {lt: self.camera_of(it) for it, lt in zip(self.image_topics, self.label_topics, strict=False)}


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
        self.owned = True         # whether the label being handed over is this source's (a shard's margins: no)
        self.cityscapes = False
        self.gt_format = 'trainid'   # ids of the ground truth travelling with an image (Cityscapes: labelid)
        self.seen_images: dict[str, OrderedDict[int, None]] = {}   # camera -> recent image stamps (bounded)
        self.seen_labels: dict[str, OrderedDict[int, None]] = {}   # camera -> recent label stamps (bounded)
        self.predictions: Any = None
        if spec.save_predictions:
            from evit_ros.eval.predictions import PredictionWriter
            self.predictions = PredictionWriter(spec.save_predictions, spec.label_format, staged=True)
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

    def _repeated(self, seen: dict[str, OrderedDict[int, None]], cam: str, stamp: int) -> bool:
        """Whether ``stamp`` was already seen for ``cam`` (among the last STAMP_MEMORY); remembers it."""
        recent = seen.setdefault(cam, OrderedDict())
        if stamp in recent:
            return True
        recent[stamp] = None
        if len(recent) > STAMP_MEMORY:
            recent.popitem(last=False)
        return False

    def score(self, cam: str, stamp: int, pred: np.ndarray, gt: np.ndarray) -> None:
        c = self.state.counters
        if gt.shape != pred.shape:
            c['bad_label_size'] += 1
            c['frames_bad_gt'] += 1
            LOG.debug('label %dx%d (HxW) for %s@%d differs from the image size %dx%d', gt.shape[0], gt.shape[1],
                      cam, stamp, pred.shape[0], pred.shape[1])
            return
        self.state.cm.update(gt, pred)
        self.state.camera_cm(cam).update(gt, pred)
        c['frames_scored'] += 1
        slot = self.sample_waiting.pop((cam, stamp), None)
        if slot is not None and slot < len(self.state.samples):
            self.state.samples[slot]['gt'] = _small(self.palette[gt], SAMPLE_WIDTH).tobytes()

    def duplicate_label(self, cam: str, stamp: int) -> bool:
        """A label whose stamp this camera already had a label for: counted (when owned) and never paired."""
        if not self._repeated(self.seen_labels, cam, stamp):
            return False
        if self.owned:
            self.state.counters['duplicate_stamps'] += 1
            self.state.counters['duplicate_label_stamps'] += 1
        return True

    def waiting_for_labels(self) -> bool:
        return any(self.pending_pred.values())

    def waiting_for(self, cam: str, stamp: int) -> bool:
        return stamp in self.pending_pred.get(cam, {})

    def on_label(self, cam: str, stamp: int, gt: np.ndarray) -> None:
        if self.duplicate_label(cam, stamp):
            return
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
        """End of a source (also after Ctrl-C): count what never matched, move the out-bag and the prediction
        PNGs into place."""
        for preds in self.pending_pred.values():
            self.state.counters['frames_without_gt'] += len(preds)
            preds.clear()
        for gts in self.pending_gt.values():
            self.state.counters['labels_without_image'] += len(gts)
            gts.clear()
        if self.writer:
            self.writer.close()
        if self.predictions is not None:
            kept = self.predictions.commit()
            if kept:
                self.state.counters['predictions_not_saved'] += kept
                LOG.warning('%d prediction PNGs of %s not saved: a file of that name exists (another bag with the '
                            'same camera and stamps?)', kept, self.source)

    def abort(self) -> None:
        """A failed source: its unfinished out-bag and its prediction PNGs are removed, nothing is left behind."""
        if self.writer:
            self.writer.abort()
        if self.predictions is not None:
            self.predictions.abort()

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
        duplicate = ev.stamp_ns in self.seen_images.get(cam, {})
        slot = -1 if duplicate else self._take_sample()
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
        c = self.state.counters
        c['frames'] += 1
        labels = np.asarray(result.labels)
        if self.writer is not None:
            self._write(cam, ev, labels, result)
        self.frames += 1
        self._repeated(self.seen_images, cam, ev.stamp_ns)
        if duplicate:   # processed (latency, out-bag) but never paired: which label is whose cannot be known
            c['duplicate_stamps'] += 1
            c['duplicate_image_stamps'] += 1
            LOG.debug('%s@%d: a second image with this stamp; not paired', cam, ev.stamp_ns)
            return
        if gt is not None:
            gt = self.prepare_label(gt, self.gt_format)
        if slot >= 0:
            self._sample(slot, cam, ev.stamp_ns, rgb, labels, gt)
        if self.predictions is not None:
            self.predictions.write(labels, cam, ev.stamp_ns, ev.frame_id, cityscapes=self.cityscapes)
        if gt is not None:
            self.score(cam, ev.stamp_ns, labels, gt)
        elif ev.detail.startswith('bad_label_'):   # ground truth that exists but cannot be used (Cityscapes)
            c[ev.detail.split(':', 1)[0]] += 1
            c['frames_bad_gt'] += 1
        elif self.spec.labels_dir:
            path = _label_path(self.spec.labels_dir, cam, ev.stamp_ns)
            if path is None:
                c['frames_without_gt'] += 1
            else:
                from evit_ros.eval.cityscapes import LabelFileError, read_label_file, warn_limited
                try:
                    label = read_label_file(path)
                except LabelFileError as exc:
                    c[exc.counter] += 1
                    c['frames_bad_gt'] += 1
                    warn_limited(exc.counter, str(exc))
                else:
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


def feed_events(events: Iterable[tuple[BagEvent, bool]], state: EvalState, spec: EvalSpec, scorer: Scorer,
                label_format: str, on_frame: Callable[[int], None]) -> None:
    """Hand each ``(event, owned)`` to ``scorer``: labels to ``on_label``, images to ``on_image``, bad ones
    counted (bad labels only when ``owned``: a shard reads past its end for labels it does not own; good
    owned labels go to ``scorer.labels_owned``). ``on_frame(frames)`` follows every image.

    ``spec.max_frames``: after that many images no further image is taken, but labels are read on (at most
    ``LABEL_WAIT_NS`` of log time past the last image) until every taken image has met its label, so N frames
    are N scored frames when their labels exist, also in every time slice.
    """
    label_cam = spec.label_cameras()
    limit_log: int | None = None   # set once max_frames images were taken: read labels up to this log time
    for ev, owned in events:
        if limit_log is not None and (not scorer.waiting_for_labels() or (ev.log_ns and ev.log_ns > limit_log)):
            break
        if ev.topic in label_cam:
            if ev.error or ev.data is None:
                if owned and limit_log is None:
                    state.counters[f'bad_label_{ev.error}'.replace('bad_label_label_', 'bad_label_')] += 1
                continue
            cam = label_cam[ev.topic]
            if limit_log is not None and not scorer.waiting_for(cam, ev.stamp_ns):
                continue   # a label of a frame past --max-frames: not read, not counted
            scorer.labels_owned += owned
            scorer.owned = owned
            scorer.on_label(cam, ev.stamp_ns, scorer.prepare_label(ev.data, label_format))
            continue
        if limit_log is not None:
            continue
        if ev.error or ev.data is None:
            state.counters[f'bad_image_{ev.error or "empty"}'] += 1
            LOG.debug('bad image on %s: %s', ev.topic, ev.detail)
            continue
        scorer.on_image(ev, spec.camera_of(ev.topic), ev.data, ev.label)
        on_frame(scorer.frames)
        if spec.max_frames and scorer.frames >= spec.max_frames:
            if not scorer.waiting_for_labels():
                break
            limit_log = (ev.log_ns or 0) + LABEL_WAIT_NS


def default_palette(n: int) -> np.ndarray:
    from evit_ros.datasets import CITYSCAPES_COLORS
    pal = np.zeros((256, 3), np.uint8)
    colors = CITYSCAPES_COLORS if n <= len(CITYSCAPES_COLORS) else [((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)
                                                                    for i in range(n)]
    pal[:len(colors)] = np.asarray(colors, np.uint8)[:256]
    return pal
