"""Is this engine right on this device? The engine against ONNX Runtime on the same preprocessed frames.

The comparison follows Polygraphy's model (``polygraphy run --trt --onnxrt``): both runners get the same
inputs, every output is compared separately with its own statistics (mean / p99 / max absolute error), and the
run passes or fails on stated thresholds. Our outputs are class ids, so labels are compared by agreement
and per-class IoU (ONNX Runtime's labels as the reference), and confidence (uint8 max-softmax x 255) or
logits by their absolute error.

Thresholds by engine precision (the sidecar's), overridable:

* fp32: labels agree on >= 99.9 % of the pixels;
* fp16: labels agree on >= 99.5 % (the attention stays FP32; the convolutions' rounding flips boundary pixels);
* int8: the mIoU of the engine's labels scored against ONNX Runtime's labels is >= 100 - ``max_miou_delta``
  (default 1.0 point), with ONNX Runtime running the ONNX the engine was built from (the Q/DQ graph of
  ``evit-ros quantize``: both runtimes then execute the same quantized arithmetic). Against the FP32
  graph, pass a delta measured for your model: the demo model's INT8 graph scores 97.2 against its FP32 graph
  (ONNX Runtime, 400 held-out frames) while its ground-truth mIoU is only 0.17 points lower, so a reference
  mIoU is a strict measure.

``candidate`` may also be another ONNX (``--candidate-onnx``, e.g. the INT8 graph against FP32 on the CPU before
going to the device); then "engine" in the report means that graph on ONNX Runtime.
"""
from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.errors import DataError, EngineError
from evit_ros.eval.metrics import ConfusionMatrix
from evit_ros.inference import InferenceBackend, InferenceResult

DEFAULT_MIN_AGREEMENT = {'fp32': 99.9, 'fp16': 99.5}
DEFAULT_MAX_MIOU_DELTA = {'int8': 1.0}


@dataclass(frozen=True)
class Thresholds:
    """Pass criteria: a minimum label agreement (%) and/or a maximum mIoU delta (points) against the reference."""

    min_label_agreement: float | None = None
    max_miou_delta: float | None = None

    @classmethod
    def for_precision(cls, precision: str, min_label_agreement: float | None = None,
                      max_miou_delta: float | None = None) -> Thresholds:
        if min_label_agreement is not None or max_miou_delta is not None:
            return cls(min_label_agreement, max_miou_delta)
        if 'int8' in precision:   # int8, and explicit-quantization names a builder may record
            return cls(None, DEFAULT_MAX_MIOU_DELTA['int8'])
        # fp32 is strict; anything else (fp16, best, unknown) gets the FP16 rule rather than no check at all
        return cls(DEFAULT_MIN_AGREEMENT.get(precision, DEFAULT_MIN_AGREEMENT['fp16']), None)

    def describe(self) -> str:
        parts = []
        if self.min_label_agreement is not None:
            parts.append(f'labels agree >= {self.min_label_agreement:g}%')
        if self.max_miou_delta is not None:
            parts.append(f'mIoU vs reference >= {100 - self.max_miou_delta:g} (delta <= {self.max_miou_delta:g})')
        return ' and '.join(parts) or 'none'


@dataclass
class VerifyReport:
    """Everything ``verify-engine`` prints and writes as JSON."""

    engine: str
    reference: str
    precision: str
    frames: int
    pixels: int
    label_agreement: float                      # %
    miou_vs_reference: float                    # %, over the classes present in the reference labels
    per_class_iou: dict[str, float | None]      # %, None where a class occurs in neither
    outputs: dict[str, dict[str, float]]        # per compared output: error statistics
    latency_ms: dict[str, dict[str, float]]     # engine / reference -> p50/p95/mean/max of infer (interleaved)
    latency_ratio_p50: float                    # engine p50 / reference p50, measured in the same run
    thresholds: dict[str, float | None]
    passed: bool
    failures: list[str] = field(default_factory=list)
    engine_info: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def table(self) -> str:
        lines = [f'engine    {self.engine} ({self.precision})', f'reference {self.reference} (ONNX Runtime CPU)',
                 f'frames    {self.frames} ({self.pixels} pixels compared)', '',
                 f'{"check":34s} {"value":>12s}', f'{"-" * 34} {"-" * 12}',
                 f'{"labels agree (%)":34s} {self.label_agreement:12.3f}',
                 f'{"mIoU vs reference (%)":34s} {self.miou_vs_reference:12.3f}']
        for name, stats in self.outputs.items():
            for k, v in stats.items():
                lines.append(f'{name + " " + k:34s} {v:12.4g}')
        for runner, stats in self.latency_ms.items():
            lines.append(f'{runner + " infer p50 / p95 (ms)":34s} {stats["p50"]:6.2f} / {stats["p95"]:.2f}')
        lines.append(f'{"latency ratio engine / reference":34s} {self.latency_ratio_p50:12.3f}')
        lines += ['', f'{"class":16s} {"IoU vs reference (%)":>20s}']
        for name, iou in self.per_class_iou.items():
            if iou is not None:
                lines.append(f'{name:16s} {iou:20.2f}')
        verdict = 'PASSED' if self.passed else 'FAILED: ' + '; '.join(self.failures)
        lines += ['', f'thresholds: {self.thresholds_text()}', verdict]
        return '\n'.join(lines)

    def thresholds_text(self) -> str:
        return Thresholds(self.thresholds.get('min_label_agreement'), self.thresholds.get('max_miou_delta')).describe()


def onnx_from_sidecar(sidecar: dict[str, Any]) -> str | None:
    """The ``--onnx`` of the engine's recorded build command (the graph it was built from), if any."""
    cmd = str(sidecar.get('build_command', ''))
    try:
        args = shlex.split(cmd)
    except ValueError:
        return None
    for i, a in enumerate(args[:-1]):
        if a == '--onnx':
            return args[i + 1]
    return None


def _labels(res: InferenceResult, n: int) -> np.ndarray:
    if res.labels is not None:
        return np.asarray(res.labels[:n])
    if res.logits is not None:
        return np.argmax(res.logits[:n], axis=1).astype(np.uint8)
    raise EngineError('the runner returned neither labels nor logits')


def _pct(samples: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples, np.float64)
    return {'p50': float(np.percentile(a, 50)), 'p95': float(np.percentile(a, 95)), 'mean': float(a.mean()),
            'max': float(a.max())}


class _ErrorStats:
    """Running absolute-error statistics of one output (Polygraphy's mean / max; p99 from a bounded histogram)."""

    def __init__(self, bins: int = 1024, hi: float = 256.0, integer: bool = False) -> None:
        self.integer = integer   # integer outputs: one bin per value, so p99 is exact
        self.hist = np.zeros(bins, np.int64)
        self.hi = hi
        self.sum = 0.0
        self.count = 0
        self.max = 0.0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        d = np.abs(a.astype(np.float32) - b.astype(np.float32)).ravel()
        self.sum += float(d.sum())
        self.count += d.size
        self.max = max(self.max, float(d.max()) if d.size else 0.0)
        idx = np.minimum((d / self.hi * len(self.hist)).astype(np.int64), len(self.hist) - 1)
        self.hist += np.bincount(idx, minlength=len(self.hist))

    def summary(self) -> dict[str, float]:
        cdf = np.cumsum(self.hist)
        p99_bin = int(np.searchsorted(cdf, 0.99 * max(1, self.count)))
        width = self.hi / len(self.hist)
        p99 = p99_bin * width if self.integer else min((p99_bin + 1) * width, self.max)
        return {'mean_abs_err': self.sum / max(1, self.count), 'p99_abs_err': p99, 'max_abs_err': self.max}


def compare(engine: InferenceBackend, reference: InferenceBackend, frames: Iterable[np.ndarray], *,
            thresholds: Thresholds, precision: str, class_names: Sequence[str], resize_mode: str = 'stretch',
            interpolation: str = 'linear', max_frames: int = 0, engine_label: str = '',
            reference_label: str = '') -> VerifyReport:
    """Run both loaded backends on the same preprocessed frames and score the engine against the reference."""
    from evit_ros.contract import IMAGENET_MEAN, IMAGENET_STD
    from evit_ros.pipeline.preprocess import Preprocessor, normalize_nchw
    io, ref_io = engine.io, reference.io
    if io.input_hw != ref_io.input_hw or io.input_format != ref_io.input_format or io.head != ref_io.head:
        raise EngineError(f'engine takes {io.input_format} {io.input_hw} with head {io.head!r} but the ONNX takes '
                          f'{ref_io.input_format} {ref_io.input_hw} with head {ref_io.head!r}; pass the --onnx the '
                          'engine was built from')
    static = io.static_batch
    rows = static or 1
    pre = Preprocessor(io.input_hw, resize_mode, interpolation)
    n_classes = len(class_names)
    cm = ConfusionMatrix(n_classes)
    agree = pixels = n = 0
    lat: dict[str, list[float]] = {'engine': [], 'reference': []}
    errs: dict[str, _ErrorStats] = {}
    buf = np.empty((rows, *io.input_hw, 3), np.uint8)
    for frame in frames:
        if max_frames and n >= max_frames:
            break
        pre.run([frame] * rows, out=buf)
        feed = normalize_nchw(buf, IMAGENET_MEAN, IMAGENET_STD) if io.input_format == 'float-nchw' else buf
        t0 = time.perf_counter()
        r_eng = engine.infer(feed)
        t1 = time.perf_counter()
        # copy: backends may reuse their output buffers on the next call
        eng_labels = _labels(r_eng, 1).copy()
        eng_conf = None if r_eng.confidence is None else np.array(r_eng.confidence[:1])
        eng_logits = None if r_eng.logits is None else np.array(r_eng.logits[:1])
        t2 = time.perf_counter()
        r_ref = reference.infer(feed)
        t3 = time.perf_counter()
        lat['engine'].append(r_eng.timings_ms.get('infer', (t1 - t0) * 1e3))
        lat['reference'].append(r_ref.timings_ms.get('infer', (t3 - t2) * 1e3))
        ref_labels = _labels(r_ref, 1)
        if eng_labels.shape != ref_labels.shape:
            raise EngineError(f'engine labels {eng_labels.shape} vs ONNX Runtime {ref_labels.shape}: not the same '
                              'graph; pass the --onnx the engine was built from')
        agree += int(np.count_nonzero(eng_labels == ref_labels))
        pixels += int(ref_labels.size)
        cm.update(ref_labels, eng_labels)   # engine ids outside the classes count as wrong
        if eng_conf is not None and r_ref.confidence is not None:
            errs.setdefault('confidence', _ErrorStats(256, 256.0, integer=True)).add(eng_conf, r_ref.confidence[:1])
        if eng_logits is not None and r_ref.logits is not None:
            errs.setdefault('logits', _ErrorStats(1024, 64.0)).add(eng_logits, r_ref.logits[:1])
        n += 1
    if n == 0:
        raise DataError('no frames to compare: the bag topic or image folder holds no decodable images')
    iou = cm.iou()
    per_class = {name: (None if np.isnan(v) else float(100 * v)) for name, v in zip(class_names, iou, strict=True)}
    # over the classes in the reference labels (as mIoU over ground-truth classes): a class the engine alone
    # predicts on a few pixels lowers the IoU of the classes it took them from, not the mean by a whole class
    in_reference = (cm.matrix.sum(axis=1) > 0) & ~np.isnan(iou)
    miou = float(100 * iou[in_reference].mean()) if in_reference.any() else 100.0
    agreement = 100.0 * agree / max(1, pixels)
    failures = []
    if thresholds.min_label_agreement is not None and agreement < thresholds.min_label_agreement:
        failures.append(f'labels agree on {agreement:.3f}% < {thresholds.min_label_agreement:g}%')
    if thresholds.max_miou_delta is not None and 100.0 - miou > thresholds.max_miou_delta:
        failures.append(f'mIoU vs reference {miou:.2f} is {100 - miou:.2f} points below 100 '
                        f'(> {thresholds.max_miou_delta:g})')
    outputs = {name: e.summary() for name, e in errs.items()}
    return VerifyReport(engine=engine_label, reference=reference_label, precision=precision, frames=n, pixels=pixels,
                        label_agreement=agreement, miou_vs_reference=miou, per_class_iou=per_class, outputs=outputs,
                        latency_ms={k: _pct(v) for k, v in lat.items()},
                        latency_ratio_p50=float(np.median(lat['engine']))
                        / max(1e-9, float(np.median(lat['reference']))),
                        thresholds={'min_label_agreement': thresholds.min_label_agreement,
                                    'max_miou_delta': thresholds.max_miou_delta},
                        passed=not failures, failures=failures, engine_info=dict(engine.describe()))


def write_report(report: VerifyReport, path: str | Path) -> Path:
    from evit_ros.fileio import replace_atomically
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(p, report.to_json().encode())
    return p


__all__ = ['Thresholds', 'VerifyReport', 'compare', 'onnx_from_sidecar', 'write_report']
