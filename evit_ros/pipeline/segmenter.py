"""The one perception pipeline the ROS node and the evaluator both run: frames -> batch -> backend -> results.

Heads (see :mod:`evit_ros.contract`): ``labels``/``labels+confidence``/``labels+logits`` come back at the graph
input size; ``labels-lowres`` at 1/8 of it and ``logits`` as float ``[N, C, h/8, w/8]``. For the last two,
class ids are the argmax at 1/8 upsampled with nearest neighbour (the cheap path). Confidence, when asked
for, is the graph's own map (``labels+confidence``) or max softmax of the 1/8 logits, upsampled bilinearly
(``labels+logits``, the node's head: the engine never spends time on confidence nobody subscribed to).

Results hold buffers reused per camera slot (position in ``frames``): a :class:`FrameResult` is valid until the
next :meth:`Segmenter.process` call; copy what you keep longer.
"""
from __future__ import annotations

import array
import time
from collections.abc import Container, Hashable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from evit_ros.config import DrivableConfig, InputConfig, OutputConfig
from evit_ros.contract import CONFIDENCE_NAME, IMAGENET_MEAN, IMAGENET_STD
from evit_ros.datasets import IGNORE_ID, DatasetInfo
from evit_ros.errors import BackendError, FrameError
from evit_ros.inference import InferenceBackend, InferenceResult
from evit_ros.pipeline.drivable import ClassGroups, RoiMask, class_fractions, freespace_boundary, group_fraction
from evit_ros.pipeline.postprocess import Palette, labels_to_source, mask_padding, overlay, upsample_nearest
from evit_ros.pipeline.preprocess import Preprocessor, ResizePlan, normalize_nchw


@dataclass
class GroupResult:
    """One class group: 0/255 mask, share of the image, share of the ROI, free-space boundary row per column.

    ``mask`` is ``None`` when :meth:`Segmenter.derive` was told nobody needs the full-size mask (the
    fractions and the boundary were then computed at the model size, where they are exact).
    """

    mask: np.ndarray | None
    fraction: float
    roi_fraction: float
    boundary_rows: np.ndarray


@dataclass
class FrameResult:
    """Everything derived from one camera frame, at the output resolution (camera, or model size)."""

    labels: np.ndarray
    confidence: np.ndarray | None
    color: np.ndarray | None
    overlay: np.ndarray | None
    groups: dict[str, GroupResult]
    class_fractions: np.ndarray | None     # None when derive() was told nobody reads them
    timings_ms: dict[str, float] = field(default_factory=dict)
    plan: ResizePlan | None = None
    # what derive() needs (valid until the next Segmenter.process/run_labels call)
    frame: np.ndarray | None = field(default=None, repr=False)
    model_rgb: np.ndarray | None = field(default=None, repr=False)
    labels_model: np.ndarray | None = field(default=None, repr=False)
    slot: _Slot | None = field(default=None, repr=False)
    # (mean max-softmax probability, fraction of pixels below the threshold), at the confidence's own (1/8)
    # resolution, when run_labels was given a confidence_threshold and the head yields confidence
    confidence_stats: tuple[float, float] | None = None


def _message_buffer(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A numpy array backed by an ``array.array`` (uint8): ROS messages take that object as their payload
    without a copy (see :func:`evit_ros.ros.conversions.numpy_to_image`)."""
    if np.dtype(dtype) != np.uint8:
        return np.empty(shape, dtype)
    n = int(np.prod(shape))
    return np.frombuffer(array.array('B', bytes(n)), np.uint8, count=n).reshape(shape)


class _Slot:
    """Per-camera output buffers, reused while the camera's frame size stays the same (bounded)."""

    def __init__(self) -> None:
        self.hw: tuple[int, int] | None = None
        self.buffers: dict[str, np.ndarray] = {}

    def fit(self, frame_hw: tuple[int, int]) -> bool:
        """Drop every buffer when the camera frame size changes, so none sized for an outlier frame stays."""
        if frame_hw == self.hw:
            return False
        self.hw = frame_hw
        self.buffers.clear()
        return True

    def get(self, name: str, shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
        buf = self.buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self.buffers[name] = _message_buffer(shape, dtype)
        return buf


def logits_to_labels(logits: np.ndarray, want_confidence: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """float ``[N, C, h, w]`` -> uint8 argmax ``[N, h, w]`` and optionally max-softmax * 255 (uint8)."""
    labels = np.argmax(logits, axis=1).astype(np.uint8)
    if not want_confidence:
        return labels, None
    return labels, np.stack([confidence_lowres(x) for x in logits])


def confidence_lowres(logits: np.ndarray) -> np.ndarray:
    """float ``[C, h, w]`` logits -> uint8 ``[h, w]`` max softmax probability * 255 (rounded).

    max softmax = 1 / sum(exp(l - max l)). At 1/8 of the model size this costs well under a millisecond;
    :meth:`Segmenter.run_labels` upsamples it bilinearly, so the engine never computes confidence.
    """
    mx = logits.max(axis=0)
    denom = np.exp(logits - mx).sum(axis=0)
    return np.clip(np.rint(255.0 / denom), 0, 255).astype(np.uint8)


def confidence_stats(confidence: np.ndarray, threshold: float) -> tuple[float, float]:
    """(mean, fraction of pixels below ``threshold``) of a uint8 confidence map (probability x 255).

    The uncertainty signal of a camera: a scene unlike what the model learned (a covered lens, night for a day
    model, the demo weights on a real camera) lowers the max softmax probability over the whole frame.
    """
    n = max(1, confidence.size)
    below = np.count_nonzero(confidence < threshold * 255.0)
    return float(confidence.mean(dtype=np.float64)) / 255.0, float(below) / n


def _named(which: bool | Container[str], name: str) -> bool:
    """``which`` is True (all), False (none) or a set of names."""
    if isinstance(which, bool):
        return which
    return name in which


def _resize_linear(src: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Bilinear ``src`` -> ``out``'s size, written into ``out``."""
    res = cv2.resize(src, (out.shape[1], out.shape[0]), dst=out, interpolation=cv2.INTER_LINEAR)
    if res is not out and not np.shares_memory(res, out):
        np.copyto(out, res)
    return out


def _planes(slot: _Slot, hw: tuple[int, int]) -> list[np.ndarray]:
    """Three reused single-channel scratch buffers for :meth:`Palette.colorize`."""
    return [slot.get(f'plane{c}', hw) for c in range(3)]


def _integer_stretch(plan: ResizePlan) -> tuple[int, int] | None:
    """(sy, sx) when camera-size nearest labels are the model labels repeated sy x sx times (exact)."""
    if plan.mode != 'stretch':
        return None
    (sh, sw), (mh, mw) = plan.src_hw, plan.out_hw
    if sh % mh or sw % mw:
        return None
    return sh // mh, sw // mw


class Segmenter:
    """Decoded RGB frames of any sizes -> per-frame labels, confidence, color, overlay, groups and fractions.

    Two phases so a node can publish the mask before anything else is computed: :meth:`run_labels`
    (preprocess, inference, class ids and confidence at the output size) and :meth:`derive` (color,
    overlay, groups, fractions). :meth:`process` runs both.
    """

    def __init__(self, backend: InferenceBackend, *, input_cfg: InputConfig, outputs: OutputConfig,
                 drivable: DrivableConfig, dataset: DatasetInfo) -> None:
        self.backend = backend
        self.io = backend.io
        self.dataset = dataset
        self.input_cfg = input_cfg
        self.preprocessor = Preprocessor(self.io.input_hw, input_cfg.resize_mode, input_cfg.interpolation)
        self._float_input = self.io.input_format == 'float-nchw'
        self._nchw: np.ndarray | None = None
        self._slots: list[_Slot] = []
        self._keyed: dict[Hashable, _Slot] = {}   # buffers per caller key (camera), see run_labels
        self.runs: list[tuple[int, float, float]] = []   # engine runs of the last run_labels call
        self.update(outputs=outputs, drivable=drivable)

    # -- configuration -------------------------------------------------------------------------------
    def update(self, *, outputs: OutputConfig | None = None, drivable: DrivableConfig | None = None) -> None:
        """Apply live parameter changes (palette, alpha, mask resolution, groups, ROI). Validates first."""
        if drivable is not None:
            groups = ClassGroups.from_names(drivable.groups, self.dataset)  # raises before anything changes
            self.drivable = drivable
            self.groups = groups
            self.roi = RoiMask(drivable.roi)
        if outputs is not None:
            self.palette = Palette(self.dataset.colors, outputs.palette_overrides)
            self.outputs = outputs

    @property
    def max_batch(self) -> int:
        return max(1, int(self.io.max_batch))

    @property
    def engine_confidence(self) -> bool:
        """True when the graph itself computes full-size confidence every frame (legacy labels+confidence)."""
        return any(o.name == CONFIDENCE_NAME for o in self.io.outputs)

    # -- processing -------------------------------------------------------------------------------------
    def process(self, frames: Sequence[np.ndarray], *, want_color: bool = True, want_overlay: bool = False,
                want_confidence: bool = False) -> list[FrameResult]:
        """Run all frames (one per camera) through the backend as one batch (chunks of ``io.max_batch``).

        ``timings_ms`` per frame: ``preprocess`` and ``infer`` of the whole chunk the frame was in,
        ``postprocess`` of the frame itself.
        """
        results = self.run_labels(frames, want_confidence=want_confidence)
        for fr in results:
            self.derive(fr, want_color=want_color, want_overlay=want_overlay)
        return results

    def run_labels(self, frames: Sequence[np.ndarray], *,
                   want_confidence: bool | Sequence[bool] = False,
                   keys: Sequence[Hashable] | None = None,
                   confidence_threshold: float | None = None) -> list[FrameResult]:
        """Phase 1: class ids (and confidence when wanted) at the output size; the rest is left to :meth:`derive`.

        ``want_confidence``: one flag for all frames or one per frame (per camera subscribers).
        ``keys``: one per frame (the camera), so each key keeps its own output buffers whatever its position in
        this call (a node running its cameras one per call); None: buffers by position.
        ``confidence_threshold`` (0..1): also fill each result's ``confidence_stats`` (from the 1/8 confidence;
        well under a millisecond).
        ``timings_ms``: ``preprocess``/``infer`` of the chunk, ``postprocess`` of this frame's labels.
        :attr:`runs` lists every engine run of the call: (frames, preprocess ms, infer ms).
        """
        n = len(frames)
        self.runs = []
        if n == 0:
            return []
        conf_flags = [bool(want_confidence)] * n if isinstance(want_confidence, bool) else \
            [bool(v) for v in want_confidence]
        if len(conf_flags) != n:
            raise FrameError(f'want_confidence has {len(conf_flags)} flags for {n} frames', 'size')
        if keys is not None and len(keys) != n:
            raise FrameError(f'keys has {len(keys)} entries for {n} frames', 'size')
        if keys is None:
            while len(self._slots) < n:
                self._slots.append(_Slot())
            slots = self._slots[:n]
        else:   # per-key buffers: one-at-a-time runs of cameras of different sizes never reallocate
            slots = [self._keyed.setdefault(k, _Slot()) for k in keys]
        static_batch, chunk = self.io.static_batch, self.io.run_batch
        results: list[FrameResult] = []
        for start in range(0, n, chunk):
            part = frames[start:start + chunk]
            t0 = time.perf_counter()
            rows = static_batch or len(part)
            batch = self.preprocessor.batch_buffer(rows)
            plans = []
            for i, frame in enumerate(part):
                self._check_frame(frame, start + i)
                plans.append(self.preprocessor.run_one(frame, batch[i]))
            if rows > len(part):
                batch[len(part):] = 0
            feed = self._normalized(batch) if self._float_input else batch
            t1 = time.perf_counter()
            res = self.backend.infer(feed)
            t2 = time.perf_counter()
            labels_b = self._labels_from(res, len(part))
            pre_ms, inf_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
            self.runs.append((len(part), pre_ms, inf_ms))
            for i, frame in enumerate(part):
                tp = time.perf_counter()
                if slots[start + i].fit(frame.shape[:2]):
                    self._forget_other_sizes()
                conf_raw = self._confidence_from(res, i) \
                    if conf_flags[start + i] or confidence_threshold is not None else None
                fr = self._labels_out(slots[start + i], frame, batch[i], plans[i], labels_b[i],
                                      conf_raw if conf_flags[start + i] else None)
                if confidence_threshold is not None and conf_raw is not None:
                    fr.confidence_stats = confidence_stats(conf_raw, confidence_threshold)
                fr.timings_ms = {'preprocess': pre_ms, 'infer': inf_ms,
                                 'postprocess': (time.perf_counter() - tp) * 1e3}
                results.append(fr)
        return results

    def _forget_other_sizes(self) -> None:
        """Size-keyed caches keep only the sizes the slots hold now (bounded memory after an outlier frame)."""
        sizes = {s.hw for s in (*self._slots, *self._keyed.values()) if s.hw is not None}
        sizes |= {self.preprocessor.out_hw}
        self.roi.retain(sizes)

    @staticmethod
    def _check_frame(frame: np.ndarray, index: int) -> None:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 \
                or frame.shape[0] == 0 or frame.shape[1] == 0:
            desc = f'{frame.dtype} {frame.shape}' if isinstance(frame, np.ndarray) else type(frame).__name__
            raise FrameError(f'frame {index} is {desc}; expected decoded RGB uint8 [H, W, 3] '
                             '(use evit_ros.pipeline.decode_image)', 'encoding')

    def _normalized(self, batch: np.ndarray) -> np.ndarray:
        shape = (batch.shape[0], 3, batch.shape[1], batch.shape[2])
        if self._nchw is None or self._nchw.shape != shape:
            self._nchw = np.empty(shape, np.float32)
        return normalize_nchw(batch, IMAGENET_MEAN, IMAGENET_STD, out=self._nchw)

    def _labels_from(self, res: InferenceResult, n: int) -> np.ndarray:
        if res.labels is not None:
            labels = res.labels
        elif res.logits is not None:
            labels, _ = logits_to_labels(res.logits[:n], False)
        else:
            raise BackendError(f'{self.backend.name} backend returned neither labels nor logits for head '
                               f'{self.io.head!r}; check the exported graph outputs')
        if labels.ndim != 3 or labels.shape[0] < n:
            raise BackendError(f'{self.backend.name} backend returned labels {labels.shape}; expected [N>={n}, h, w]')
        return labels

    @staticmethod
    def _confidence_from(res: InferenceResult, i: int) -> np.ndarray | None:
        """Confidence of frame ``i``: the graph's own map, else computed from the 1/8 logits (uint8)."""
        if res.confidence is not None:
            return res.confidence[i]
        if res.logits is not None:
            return confidence_lowres(res.logits[i])
        return None

    def _labels_out(self, slot: _Slot, frame: np.ndarray, model_rgb: np.ndarray, plan: ResizePlan,
                    labels_raw: np.ndarray, conf_raw: np.ndarray | None) -> FrameResult:
        model_hw = self.preprocessor.out_hw
        at_model = self.outputs.mask_resolution == 'model'
        # class ids at the model (graph input) size; low-resolution heads are upsampled by nearest neighbour
        if labels_raw.shape != model_hw or labels_raw.dtype != np.uint8:
            labels_model = upsample_nearest(labels_raw, model_hw, out=slot.get('labels_model', model_hw))
        else:
            labels_model = labels_raw
        if at_model:
            labels = slot.get('labels', model_hw)
            np.copyto(labels, labels_model)
            mask_padding(labels, plan)
        else:
            labels = labels_to_source(labels_model, plan, plan.src_hw, out=slot.get('labels', plan.src_hw))
        conf = None if conf_raw is None else self._confidence_out(slot, conf_raw, plan, at_model)
        return FrameResult(labels=labels, confidence=conf, color=None, overlay=None, groups={},
                           class_fractions=np.zeros(0), plan=plan, frame=frame, model_rgb=model_rgb,
                           labels_model=labels_model, slot=slot)

    def _confidence_out(self, slot: _Slot, conf_raw: np.ndarray, plan: ResizePlan, at_model: bool) -> np.ndarray:
        """Confidence at the output size: the graph's model-size map, or the 1/8 map interpolated bilinearly
        (a probability map, unlike class ids, may be interpolated); outside the model's view it is 0."""
        model_hw = self.preprocessor.out_hw
        full = conf_raw.shape == model_hw
        if at_model:
            conf = slot.get('confidence', model_hw)
            if full:
                np.copyto(conf, conf_raw)
            else:
                _resize_linear(conf_raw, conf)
            return mask_padding(conf, plan, fill=0)
        out = slot.get('confidence', plan.src_hw)
        if not full and plan.mode == 'stretch':   # the 1/8 map straight at the camera pixels (one pass, not two)
            return _resize_linear(conf_raw, out)
        conf_model = conf_raw if full else _resize_linear(conf_raw, slot.get('conf_model', model_hw))
        return labels_to_source(conf_model, plan, plan.src_hw, out=out, fill=0)

    def derive(self, fr: FrameResult, *, want_color: bool = True, want_overlay: bool = False,
               group_masks: bool | Container[str] = True, want_fractions: bool = True,
               compute_groups: bool | Container[str] = True) -> FrameResult:
        """Phase 2: color, overlay, groups and class fractions of a :meth:`run_labels` result (in place).

        ``group_masks``: which groups need their full-size 0/255 mask (True: all). With a camera-size
        output that is an integer multiple of the model size (stretch), fractions and boundaries are
        computed at the model size, where they are exact, and unneeded full-size masks are skipped.
        ``want_fractions=False`` leaves ``class_fractions`` None (the node counts them once per diagnostics
        report); ``compute_groups`` names the groups to compute at all (True: all; a group in ``group_masks`` is
        always computed). Adds its time to ``timings_ms['postprocess']``.
        """
        t0 = time.perf_counter()
        slot, plan, labels, labels_model = fr.slot, fr.plan, fr.labels, fr.labels_model
        if slot is None or plan is None or labels_model is None or fr.frame is None or fr.model_rgb is None:
            raise BackendError('derive() needs a FrameResult from run_labels() of this segmenter')
        model_hw = self.preprocessor.out_hw
        at_model = self.outputs.mask_resolution == 'model'
        out_hw = (int(labels.shape[0]), int(labels.shape[1]))
        rgb = fr.model_rgb if at_model else fr.frame
        color: np.ndarray | None = None
        ovl: np.ndarray | None = None
        if (want_color or want_overlay) and at_model:
            color = self.palette.colorize(labels, out=slot.get('color', (*out_hw, 3)), planes=_planes(slot, out_hw))
        elif want_color or want_overlay:
            # color at the model size, then map: identical result, a quarter of the lookups
            color_model = self.palette.colorize(labels_model, out=slot.get('color_model', (*model_hw, 3)),
                                                planes=_planes(slot, model_hw))
            color = labels_to_source(color_model, plan, out_hw, out=slot.get('color', (*out_hw, 3)), fill=0)
        if want_overlay and color is not None:
            ovl = overlay(rgb, color, self.outputs.overlay_alpha, out=slot.get('overlay', (*out_hw, 3)))
            if not want_color:
                color = None
        rep = None if at_model else _integer_stretch(plan)
        base = labels_model if rep is not None else labels
        base_hw = (int(base.shape[0]), int(base.shape[1]))
        groups = {}
        scratch = (slot.get('b_bool', base_hw, np.bool_), slot.get('b_u16', base_hw, np.uint16))
        for g in self.groups:
            if not (_named(compute_groups, g.name) or _named(group_masks, g.name)):
                continue
            mask = g.mask(base, out=slot.get(f'group_base_{g.name}', base_hw))
            boundary = freespace_boundary(mask, scratch=scratch)
            full: np.ndarray | None = mask
            if rep is not None:
                sy, sx = rep
                boundary = np.repeat(boundary * sy, sx)
                wanted = _named(group_masks, g.name)
                full = g.mask(labels, out=slot.get(f'group_{g.name}', out_hw)) if wanted else None
            groups[g.name] = GroupResult(mask=full, fraction=group_fraction(mask),
                                         roi_fraction=self.roi.fraction(mask, scratch=slot.get('roi', base_hw)),
                                         boundary_rows=boundary)
        fr.color, fr.overlay, fr.groups = color, ovl, groups
        fr.class_fractions = class_fractions(base, self.dataset.num_classes) if want_fractions else None
        fr.timings_ms['postprocess'] = fr.timings_ms.get('postprocess', 0.0) + (time.perf_counter() - t0) * 1e3
        return fr


__all__ = ['FrameResult', 'GroupResult', 'Segmenter', 'confidence_lowres', 'confidence_stats', 'logits_to_labels',
           'IGNORE_ID']
