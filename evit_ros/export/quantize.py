"""Explicit INT8: a Q/DQ ONNX from an exported FP32 graph, calibrated on frames the node would see.

TensorRT 10 deprecates implicit INT8 calibration in favour of explicitly quantized graphs (QuantizeLinear /
DequantizeLinear pairs). TensorRT's requirements decide the recipe, applied with ONNX Runtime's
``quantize_static`` (runs on the CPU):

* symmetric INT8 everywhere (zero point 0): per-tensor activations, per-channel weights (axis 0 of a Conv);
* weights stay FP32 behind a Q -> DQ pair (``AddQDQPairToWeight``): TensorRT 8.6's parser accepts only
  activation tensors into DequantizeLinear, and it fuses the pair into an INT8 kernel itself;
  biases stay FP32 (``QuantizeBias=False``: TensorRT has no INT32 bias dequantization);
* only the network's convolutions are quantized (``/model/`` scope). Excluded and kept exact:
  the linear-attention scopes recorded at export (``evit.fp32_scopes``: eps 1e-15, token sums),
  the fixed bicubic ``exact_upsample`` convolutions, and everything outside the network (uint8 input cast and
  normalization, the labels/confidence head with its upsampling, argmax and casts).

Calibration frames go through the node's own :class:`~evit_ros.pipeline.preprocess.Preprocessor`
(resize mode and interpolation from the node YAML) and, for ``float-nchw`` graphs, its normalization, so
the activation ranges are those the vehicle produces. The output keeps the export metadata and adds
``evit.quantization`` (recipe, calibration source, frame count, FP32 parent sha256).
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros import contract
from evit_ros.errors import DataError, ExportError
from evit_ros.fileio import file_sha256, replace_atomically

log = logging.getLogger(__name__)

META_QUANTIZATION = 'evit.quantization'
QUANTIZED_OP_TYPES: tuple[str, ...] = ('Conv',)
# Fixed-weight interpolation convolutions (exact bicubic upsampling): part of the head arithmetic, kept exact.
EXACT_SCOPES: tuple[str, ...] = ('exact_upsample/',)
CALIB_METHODS: tuple[str, ...] = ('percentile', 'minmax', 'entropy')
DEFAULT_CALIB_METHOD = 'percentile'   # measured: minmax loses 1.05 mIoU points on the demo model, percentile 0.2
CALIB_PERCENTILE = 99.99
CALIB_CHUNK = 8   # frames whose intermediate tensors ONNX Runtime holds at once
MAX_CALIB_FRAMES = 1024
QDQ_SCOPE = '/evit_qdq/'   # Q/DQ at an attention output, renamed out of the attention scope
RECIPE_VERSION = 1
# Sanity check after quantization (on calibration frames: catches a broken graph, not a held-out accuracy).
MIN_CALIB_LABEL_AGREEMENT = 0.90


@dataclass(frozen=True)
class QuantizeReport:
    """What ``quantize_onnx`` wrote and how the INT8 graph agrees with its FP32 parent on calibration frames."""

    path: Path
    frames: int
    seconds: float
    calib_method: str
    quantized_nodes: tuple[str, ...]
    kept_fp32_nodes: tuple[str, ...]
    label_agreement: float
    metadata: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (f'{self.path}: {len(self.quantized_nodes)} convolutions INT8 (per-channel symmetric weights, '
                f'symmetric per-tensor activations), {len(self.kept_fp32_nodes)} network nodes kept FP32 '
                f'(attention, exact upsampling); calibrated on {self.frames} frames ({self.calib_method}) in '
                f'{self.seconds:.1f} s; labels agree with FP32 on {100 * self.label_agreement:.2f}% of the '
                'calibration pixels')


def select_nodes(model: Any, fp32_scopes: Sequence[str]) -> tuple[list[str], list[str]]:
    """(names of the Conv nodes to quantize, names of the network nodes kept in float).

    Quantized: Conv nodes under ``/model/`` outside ``fp32_scopes`` and the exact-upsampling scopes.
    """
    quantize: list[str] = []
    kept: list[str] = []
    for node in model.graph.node:
        name = node.name
        if not name.startswith('/model/') or node.op_type == 'Constant':
            continue
        protected = any(name.startswith(s) for s in fp32_scopes) or any(s in name for s in EXACT_SCOPES)
        if node.op_type in QUANTIZED_OP_TYPES and not protected:
            quantize.append(name)
        elif protected:
            kept.append(name)
    return quantize, kept


def interleave(sources: Sequence[Iterable[np.ndarray]]) -> Iterator[np.ndarray]:
    """Round-robin over several frame sources (one per camera), so a frame budget covers every camera."""
    iterators = [iter(s) for s in sources]
    sentinel = object()
    for group in itertools.zip_longest(*iterators, fillvalue=sentinel):
        for frame in group:
            if frame is not sentinel:
                yield frame


def camera_frames(*, bag: str | Path | None = None, topics: Sequence[str] = (),
                  folder: str | Path | None = None) -> Iterator[np.ndarray]:
    """Decoded RGB frames at the camera size, from bag topics or an image folder, cameras interleaved.

    A folder's sub-folders (e.g. ``images/front``, ``images/rear``) count as cameras.
    """
    from evit_ros.export import calibration
    if bag is not None:
        return interleave([calibration.iter_bag_frames(bag, t, None) for t in topics])
    if folder is None:
        raise DataError('give a bag with topics or an image folder')
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f'image folder {root} does not exist; pass a folder of camera images')
    dirs = [d for d in (root, *sorted(p for p in root.rglob('*') if p.is_dir()))
            if any(f.is_file() and f.suffix.lower() in calibration.IMAGE_SUFFIXES for f in d.iterdir())]
    if not dirs:
        raise DataError(f'image folder {root} has no images ({", ".join(calibration.IMAGE_SUFFIXES)}), '
                        'not even in sub-folders')
    return interleave([calibration.iter_image_folder(d, None) for d in dirs])


def _graph_inputs(session: Any) -> tuple[str, tuple[int, ...], str]:
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != contract.INPUT_NAME:
        raise ExportError(f'the ONNX takes {[i.name for i in inputs]}; expected one input {contract.INPUT_NAME!r} '
                          '(export it with `evit-ros export`)')
    shape = tuple(int(d) if isinstance(d, int) else -1 for d in inputs[0].shape)
    return inputs[0].name, shape, inputs[0].type


class _Feeds:
    """Preprocessed calibration batches, held in memory (a few hundred frames at most) and replayable."""

    def __init__(self, frames: Iterable[np.ndarray], *, input_format: str, input_shape: tuple[int, ...],
                 resize_mode: str, interpolation: str, max_frames: int) -> None:
        from evit_ros.contract import IMAGENET_MEAN, IMAGENET_STD
        from evit_ros.pipeline.preprocess import Preprocessor, normalize_nchw
        hw = (input_shape[1], input_shape[2]) if input_format == 'uint8-nhwc' else (input_shape[2], input_shape[3])
        batch = input_shape[0] if input_shape[0] > 0 else 1
        pre = Preprocessor(hw, resize_mode, interpolation)
        self.batches: list[np.ndarray] = []
        self.frames = 0
        pending: list[np.ndarray] = []
        for frame in itertools.islice(frames, max_frames):
            if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise DataError(f'calibration frame {self.frames} is not RGB uint8 [H, W, 3]')
            pending.append(frame)
            self.frames += 1
            if len(pending) == batch:
                self.batches.append(self._finish(pre, pending, input_format, normalize_nchw,
                                                 IMAGENET_MEAN, IMAGENET_STD))
                pending = []
        if pending:  # a static batch is completed by repeating the last frames
            while len(pending) < batch:
                pending.append(pending[-1])
            self.batches.append(self._finish(pre, pending, input_format, normalize_nchw, IMAGENET_MEAN, IMAGENET_STD))
        if not self.batches:
            raise DataError('no calibration frames: the bag topic or folder holds no decodable images')

    @staticmethod
    def _finish(pre: Any, frames: list[np.ndarray], input_format: str, normalize: Any, mean: Sequence[float],
                std: Sequence[float]) -> np.ndarray:
        out = np.empty((len(frames), *pre.out_hw, 3), np.uint8)
        pre.run(frames, out=out)
        if input_format == 'float-nchw':
            return np.ascontiguousarray(normalize(out, mean, std))
        return out


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` protocol over the preprocessed batches.

    ``set_range`` lets ONNX Runtime collect in chunks (``CalibStridedMinMax``): its histogram calibrators keep
    every intermediate tensor of the frames read at once, 6 GB for 64 frames of 256x512 without chunks.
    """

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches = batches
        self._i = 0
        self._end = len(batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._i, self._end = int(start_index), min(int(end_index), len(self._batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= self._end:
            return None
        self._i += 1
        return {contract.INPUT_NAME: self._batches[self._i - 1]}

    def rewind(self) -> None:
        self._i, self._end = 0, len(self._batches)


def _chunk(n: int, most: int = CALIB_CHUNK) -> int:
    """Largest divisor of ``n`` up to ``most`` (ONNX Runtime requires equal chunks)."""
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


def _labels(session: Any, batch: np.ndarray) -> np.ndarray:
    names = [o.name for o in session.get_outputs()]
    outs = dict(zip(names, session.run(names, {contract.INPUT_NAME: batch}), strict=True))
    if contract.LABELS_NAME in outs:
        return np.asarray(outs[contract.LABELS_NAME])
    if contract.LOGITS_NAME in outs:
        return np.argmax(outs[contract.LOGITS_NAME], axis=1)
    raise ExportError(f'the graph outputs {names}: neither labels nor logits')


def _session(model_path: str | Path, threads: int = 0) -> Any:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads > 0:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(model_path), so, providers=['CPUExecutionProvider'])


class _DropPreprocessHint(logging.Filter):
    """ONNX Runtime advises its shape-inference pre-processing on every call (it would rename the nodes we
    select), and warns about biases computed by a node (graphs exported with random weights): both harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return 'pre-processing' not in msg and not msg.startswith('Expected bias')


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """ONNX Runtime's calibrators print progress to stdout: keep it in our debug log, and drop its hint."""
    hint = _DropPreprocessHint()
    root = logging.getLogger()
    root.addFilter(hint)
    for h in root.handlers:
        h.addFilter(hint)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        root.removeFilter(hint)
        for h in root.handlers:
            h.removeFilter(hint)
        if buf.getvalue().strip():
            log.debug('onnxruntime: %s', buf.getvalue().strip().replace('\n', '; '))


def quantize_onnx(onnx_in: str | Path, output: str | Path, frames: Iterable[np.ndarray], *,
                  max_frames: int = 64, calib_method: str = DEFAULT_CALIB_METHOD, resize_mode: str = 'stretch',
                  interpolation: str = 'linear', calib_source: str = '', threads: int = 0) -> QuantizeReport:
    """Write a Q/DQ INT8 ONNX of ``onnx_in`` to ``output`` (see the module docstring for the recipe).

    ``frames``: decoded RGB uint8 camera frames of any size; at most ``max_frames`` are used.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    t0 = time.perf_counter()
    src, out = Path(onnx_in), Path(output)
    if calib_method not in CALIB_METHODS:
        raise ExportError(f'calibration method {calib_method!r} is not valid; use one of: {", ".join(CALIB_METHODS)}')
    if not 1 <= max_frames <= MAX_CALIB_FRAMES:
        raise DataError(f'--max-frames {max_frames} must be in [1, {MAX_CALIB_FRAMES}] (the preprocessed frames are '
                        'held in memory; 64-256 typical frames calibrate well)')
    if not src.is_file():
        raise ExportError(f'ONNX file {src} does not exist; create it with `evit-ros export ... -o {src}`')
    if src.resolve() == out.resolve():
        raise ExportError(f'-o {out} is the input ONNX; write the INT8 graph to another file')
    model = onnx.load(str(src))
    meta = {p.key: p.value for p in model.metadata_props}
    if contract.META_MODEL not in meta:
        raise ExportError(f'{src} has no evit.* metadata (not written by `evit-ros export`); export it first')
    if META_QUANTIZATION in meta:
        raise ExportError(f'{src} is already quantized; quantize the FP32 export instead')
    if json.loads(meta.get(contract.META_EXPORTER, '{}')).get('mixed_precision_fp16'):
        raise ExportError(f'{src} is a --mixed-precision-fp16 export; quantize the FP32 export instead')
    scopes = tuple(json.loads(meta.get(contract.META_FP32_SCOPES, '[]')))
    to_quantize, kept = select_nodes(model, scopes)
    if not to_quantize:
        raise ExportError(f'{src} has no convolutions under /model/ to quantize (not an EfficientViT export?)')

    fp32 = _session(src, threads)
    _, in_shape, _ = _graph_inputs(fp32)
    input_format = meta.get(contract.META_INPUT_FORMAT, 'uint8-nhwc')
    feeds = _Feeds(frames, input_format=input_format, input_shape=in_shape, resize_mode=resize_mode,
                   interpolation=interpolation, max_frames=max_frames)
    log.info('quantize: %d calibration frames (%d batches), %d convolutions to INT8, %d nodes kept FP32',
             feeds.frames, len(feeds.batches), len(to_quantize), len(kept))
    method = {'minmax': CalibrationMethod.MinMax, 'percentile': CalibrationMethod.Percentile,
              'entropy': CalibrationMethod.Entropy}[calib_method]
    extra: dict[str, Any] = {
        'ActivationSymmetric': True,       # TensorRT: zero point 0
        'WeightSymmetric': True,
        'AddQDQPairToWeight': True,        # FP32 weight -> Q -> DQ (TensorRT 8.6 parser)
        'QuantizeBias': False,             # TensorRT has no INT32 bias dequantization
        'DedicatedQDQPair': False,
        'CalibMovingAverage': False,
        'CalibStridedMinMax': _chunk(len(feeds.batches)),   # chunked collection, any method (bounded memory)
    }
    if calib_method == 'percentile':
        extra['CalibPercentile'] = CALIB_PERCENTILE
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='evit_quantize_') as tmp:
        raw = Path(tmp) / 'qdq.onnx'
        try:
            with _quiet_onnxruntime():
                quantize_static(str(src), str(raw), _Reader(feeds.batches), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                                nodes_to_quantize=to_quantize, op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                                calibrate_method=method, extra_options=extra)
        except Exception as exc:  # onnxruntime's own error types (shape inference, calibration)
            raise ExportError(f'ONNX Runtime quantization of {src} failed: {exc}') from exc
        qmodel = onnx.load(str(raw))
        rename_boundary_quantizers(qmodel, scopes)
        check_qdq(qmodel, scopes)
        info = {'recipe': RECIPE_VERSION, 'tool': 'onnxruntime.quantization.quantize_static',
                'format': 'QDQ', 'activations': 'int8 symmetric per-tensor', 'weights': 'int8 symmetric per-channel',
                'calib_method': calib_method, 'calib_frames': feeds.frames, 'calib_source': calib_source,
                'resize_mode': resize_mode, 'interpolation': interpolation,
                'fp32_parent_sha256': file_sha256(src), 'quantized_nodes': len(to_quantize)}
        import onnxruntime as ort
        info['onnxruntime'] = ort.__version__
        meta_out = dict(meta)
        meta_out[META_QUANTIZATION] = json.dumps(info, sort_keys=True)
        del qmodel.metadata_props[:]
        for k in sorted(meta_out):
            qmodel.metadata_props.add(key=k, value=meta_out[k])
        onnx.checker.check_model(qmodel)
        onnx.save(qmodel, str(raw))
        int8 = _session(raw, threads)
        agree = [np.mean(_labels(int8, b) == _labels(fp32, b)) for b in feeds.batches[:8]]
        agreement = float(np.mean(agree))
        if agreement < MIN_CALIB_LABEL_AGREEMENT:
            raise ExportError(f'the INT8 graph agrees with FP32 on only {100 * agreement:.1f}% of the calibration '
                              f'pixels (< {100 * MIN_CALIB_LABEL_AGREEMENT:.0f}%); calibrate on more / more typical '
                              f'frames or try another --calib-method (this was {calib_method}); a model with random '
                              'weights cannot be quantized meaningfully')
        replace_atomically(out, raw.read_bytes())
    report = QuantizeReport(path=out, frames=feeds.frames, seconds=time.perf_counter() - t0,
                            calib_method=calib_method, quantized_nodes=tuple(to_quantize), kept_fp32_nodes=tuple(kept),
                            label_agreement=agreement, metadata=meta_out)
    log.info('%s', report.summary())
    return report


def _in_scope(name: str, scopes: Sequence[str]) -> bool:
    return any(name.startswith(s) for s in scopes)


def rename_boundary_quantizers(model: Any, fp32_scopes: Sequence[str]) -> int:
    """Move Q/DQ nodes named after an attention output (ONNX Runtime names them after their tensor) out of the
    attention's name scope: TensorRT layer names are ONNX node names, and FP32 pinning goes by scope prefix.
    """
    renamed = 0
    for node in model.graph.node:
        if node.op_type in ('QuantizeLinear', 'DequantizeLinear') and _in_scope(node.name, fp32_scopes):
            node.name = QDQ_SCOPE + node.name.lstrip('/')
            renamed += 1
    return renamed


def check_qdq(model: Any, fp32_scopes: Sequence[str]) -> dict[str, int]:
    """Refuse a Q/DQ graph TensorRT would reject or run differently: non-zero or non-INT8 zero points,
    per-channel activations, or quantizers inside an attention scope. Returns counts for reports.
    """
    from onnx import numpy_helper
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    counts = {'quantize': 0, 'dequantize': 0, 'per_channel_weights': 0}
    for node in model.graph.node:
        if node.op_type not in ('QuantizeLinear', 'DequantizeLinear'):
            continue
        counts['quantize' if node.op_type == 'QuantizeLinear' else 'dequantize'] += 1
        inside = [c.name for c in consumers.get(node.output[0], []) if _in_scope(c.name, fp32_scopes)]
        if _in_scope(node.name, fp32_scopes) or inside:
            raise ExportError(f'{node.op_type} {node.name!r} sits inside an attention scope (feeds '
                              f'{inside or node.name}); the attention must stay FP32')
        zp = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is None:
            raise ExportError(f'{node.op_type} {node.name!r} has no INT8 zero point (TensorRT needs an explicit 0)')
        if zp.dtype != np.int8 or np.any(zp != 0):
            raise ExportError(f'{node.op_type} {node.name!r} zero point is {zp.dtype} {zp.ravel()[:4]}; TensorRT '
                              'needs symmetric INT8 (zero point 0)')
        scale = inits.get(node.input[1])
        if scale is not None and scale.size > 1:
            weight = node.input[0] in inits or (node.input[0] in producers
                                                 and producers[node.input[0]].op_type == 'QuantizeLinear'
                                                 and producers[node.input[0]].input[0] in inits)
            if not weight:
                raise ExportError(f'{node.op_type} {node.name!r} quantizes an activation per channel; TensorRT '
                                  'takes per-tensor activation scales')
            if node.op_type == 'QuantizeLinear':
                counts['per_channel_weights'] += 1
    return counts


__all__ = ['CALIB_METHODS', 'DEFAULT_CALIB_METHOD', 'META_QUANTIZATION', 'QuantizeReport', 'camera_frames', 'check_qdq',
           'interleave',
           'quantize_onnx', 'rename_boundary_quantizers', 'select_nodes']
