"""ONNX Runtime backend: TensorRT EP, CUDA EP or CPU, with IO binding into reused output buffers.

ONNX Runtime silently falls back to the CPU when the CUDA libraries are missing, so after creating the
session we compare the providers it actually uses with the ones we asked for and log the difference.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros import contract
from evit_ros.errors import BackendError, BackendUnavailableError
from evit_ros.inference import InferenceBackend, InferenceResult, ModelIO, TensorSpec

log = logging.getLogger(__name__)

PROVIDER_ORDER = ('TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider')
DEVICES = ('auto', 'cpu', 'cuda')

_ORT_DTYPES = {
    'tensor(uint8)': 'uint8', 'tensor(int32)': 'int32', 'tensor(int64)': 'int64',
    'tensor(float)': 'float32', 'tensor(float16)': 'float16',
}


def select_providers(available: list[str], device: str = 'auto') -> list[str]:
    """Providers to request, fastest first, among those this onnxruntime build offers."""
    if device not in DEVICES:
        raise BackendError(f'onnxruntime device={device!r} is not valid; use one of: {", ".join(DEVICES)}')
    wanted = ['CPUExecutionProvider'] if device == 'cpu' else list(PROVIDER_ORDER)
    chosen = [p for p in wanted if p in available]
    if device == 'cuda' and not any(p != 'CPUExecutionProvider' for p in chosen):
        raise BackendUnavailableError(
            f'onnxruntime has no GPU provider (available: {", ".join(available)}); install onnxruntime-gpu '
            'with matching CUDA/cuDNN, or use device cpu')
    if not chosen:
        raise BackendUnavailableError(f'onnxruntime offers none of {", ".join(wanted)} (has {available})')
    return chosen


def model_io_from_metadata(meta: dict[str, str], input_spec: TensorSpec,
                           outputs: tuple[TensorSpec, ...]) -> ModelIO:
    """ModelIO of an exported graph from its ``evit.*`` metadata; refuses graphs we did not export."""
    if contract.META_MODEL not in meta or contract.META_HEAD not in meta:
        raise BackendError('the ONNX graph has no evit.* metadata (not exported by `evit-ros export`); '
                           're-export it with `evit-ros export --model NAME ...`')
    dynamic_max = contract.dynamic_max_batch(meta)
    max_batch = dynamic_max if dynamic_max is not None else int(meta.get(contract.META_BATCH, '1'))
    try:
        classes = tuple(json.loads(meta.get(contract.META_CLASSES, '[]')))
        colors = tuple(tuple(int(v) for v in c) for c in json.loads(meta.get(contract.META_COLORS, '[]')))
    except (ValueError, TypeError) as exc:
        raise BackendError(f'the ONNX class metadata is malformed ({exc}); re-export the model') from exc
    return ModelIO(model_name=meta[contract.META_MODEL], head=meta[contract.META_HEAD],
                   input_format=meta.get(contract.META_INPUT_FORMAT, 'uint8-nhwc'), input=input_spec,
                   outputs=outputs, max_batch=max_batch, class_names=classes,
                   class_colors=colors)  # type: ignore[arg-type]


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(int(d) if isinstance(d, int) else -1 for d in arg.shape)
    dtype = _ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise BackendError(f'ONNX tensor {arg.name} has unsupported type {arg.type}')
    return TensorSpec(arg.name, shape, dtype)


def _concrete(spec: TensorSpec, meta: dict[str, str]) -> TensorSpec:
    """Fill symbolic spatial output dims (resize ops hide them from shape inference) from the metadata."""
    if all(d >= 0 for d in spec.shape[1:]):
        return spec
    try:
        ih, iw = (int(v) for v in meta[contract.META_INPUT_SIZE].split('x'))
        mh, mw = (int(v) for v in meta.get(contract.META_MODEL_SIZE, meta[contract.META_INPUT_SIZE]).split('x'))
    except (KeyError, ValueError):
        return spec
    head = meta.get(contract.META_HEAD, '')
    hw = (mh // 8, mw // 8) if head in ('logits', 'labels-lowres') else (ih, iw)
    if spec.name == contract.LOGITS_NAME:
        hw = (mh // 8, mw // 8)
        channels = spec.shape[1] if spec.shape[1] > 0 else len(json.loads(meta.get(contract.META_CLASSES, '[]')))
        return TensorSpec(spec.name, (spec.shape[0], channels, *hw), spec.dtype)
    return TensorSpec(spec.name, (spec.shape[0], *hw), spec.dtype)


class OnnxRuntimeBackend(InferenceBackend):
    """An exported evit_ros ONNX graph in ONNX Runtime."""

    name = 'onnxruntime'

    def __init__(self, onnx_path: str | Path, *, threads: int = 0, device: str = 'auto',
                 logger: logging.Logger | None = None, spin_wait: bool = False) -> None:
        super().__init__()
        self.onnx_path = Path(onnx_path)
        self.threads = int(threads)
        self.spin_wait = bool(spin_wait)
        self.device = device
        self._log = logger or log
        self._session: Any = None
        self._io: ModelIO | None = None
        self._providers: list[str] = []
        self._on_gpu = False
        self._out_bufs: dict[int, tuple[Any, dict[str, np.ndarray], dict[str, Any]]] = {}

    def load(self) -> None:
        if self._loaded:
            return
        from evit_ros.deps import require
        ort = require('onnxruntime', 'the ONNX Runtime backend')
        if not self.onnx_path.is_file():
            raise BackendError(f'ONNX file {self.onnx_path} does not exist; export it with '
                               f'`evit-ros export --model NAME --height H --width W -o {self.onnx_path}`')
        requested = select_providers(list(ort.get_available_providers()), self.device)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if self.threads > 0:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        if not self.spin_wait:
            # after each run ONNX Runtime's worker threads spin-wait for more work by default, on the very cores
            # the node's host work (postprocess, publish) and DDS need next; on a 2-core machine that slowed
            # both inference and host work (docs/performance.md)
            opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
        opts.log_severity_level = 3
        try:
            sess = ort.InferenceSession(str(self.onnx_path), sess_options=opts, providers=requested)
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            raise BackendError(f'onnxruntime could not load {self.onnx_path}: {exc}') from exc
        actual = list(sess.get_providers())
        missing = [p for p in requested if p not in actual]
        if missing:
            self._log.warning('onnxruntime asked for %s but uses %s: %s unavailable (CUDA/TensorRT libraries '
                              'missing?)', requested, actual, missing)
        self._log.info('onnxruntime %s on %s (%s threads) for %s', ort.__version__, actual,
                       self.threads or 'default', self.onnx_path.name)
        self._providers = actual
        self._on_gpu = actual[0] != 'CPUExecutionProvider'
        meta = dict(sess.get_modelmeta().custom_metadata_map)
        inputs = sess.get_inputs()
        if len(inputs) != 1 or inputs[0].name != contract.INPUT_NAME:
            raise BackendError(f'{self.onnx_path} takes {[i.name for i in inputs]}; expected one input '
                               f'{contract.INPUT_NAME!r} (re-export with `evit-ros export`)')
        outputs = tuple(_concrete(_spec(o), meta) for o in sess.get_outputs())
        self._io = model_io_from_metadata(meta, _spec(inputs[0]), outputs)
        self._session = sess
        self._loaded = True

    @property
    def io(self) -> ModelIO:
        self._require_loaded()
        if self._io is None:  # pragma: no cover - set together with _loaded
            raise BackendError('onnxruntime backend has no model IO')
        return self._io

    @property
    def providers(self) -> list[str]:
        return list(self._providers)

    def describe(self) -> dict[str, str]:
        return {'backend': self.name, 'providers': ','.join(self._providers), 'onnx': str(self.onnx_path),
                'precision': 'fp32', 'device': 'cuda' if self._on_gpu else 'cpu',
                'model': self._io.model_name if self._io else ''}

    def _check_batch(self, batch: np.ndarray) -> None:
        spec = self.io.input
        want = np.dtype(spec.dtype)
        ok_rank = batch.ndim == len(spec.shape)
        ok_dims = ok_rank and all(s < 0 or s == d for s, d in zip(spec.shape[1:], batch.shape[1:], strict=True))
        ok_n = ok_rank and (spec.shape[0] == batch.shape[0] if spec.shape[0] > 0 else
                            1 <= batch.shape[0] <= self.io.max_batch)
        if batch.dtype != want or not (ok_dims and ok_n):
            raise BackendError(f'batch is {batch.dtype} {tuple(batch.shape)}; the graph takes {spec.dtype} '
                               f'{spec.shape} (batch up to {self.io.max_batch})')

    def _binding(self, n: int) -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
        """One IO binding per batch size with preallocated output arrays (at most max_batch entries)."""
        cached = self._out_bufs.get(n)
        if cached is not None:
            return cached
        import onnxruntime as ort
        binding = self._session.io_binding()
        arrays: dict[str, np.ndarray] = {}
        values: dict[str, Any] = {}
        for out in self.io.outputs:
            shape = [n if i == 0 else d for i, d in enumerate(out.shape)]
            if any(d < 0 for d in shape):  # spatial dims unknown: let onnxruntime allocate
                binding.bind_output(out.name)
                continue
            arr = np.empty(shape, dtype=np.dtype(out.dtype))
            arrays[out.name] = arr
            if self._on_gpu:
                binding.bind_output(out.name, 'cuda')
            else:
                values[out.name] = ort.OrtValue.ortvalue_from_numpy(arr)
                binding.bind_ortvalue_output(out.name, values[out.name])
        entry = (binding, arrays, values)
        self._out_bufs[n] = entry
        return entry

    def infer(self, batch: np.ndarray) -> InferenceResult:
        self._require_loaded()
        self._check_batch(batch)
        batch = np.ascontiguousarray(batch)
        binding, arrays, values = self._binding(int(batch.shape[0]))
        t0 = time.perf_counter()
        try:
            binding.bind_cpu_input(contract.INPUT_NAME, batch)
            self._session.run_with_iobinding(binding)
        except Exception as exc:  # onnxruntime's own error types
            raise BackendError(f'onnxruntime inference failed: {exc}') from exc
        outs: dict[str, np.ndarray] = {}
        if self._on_gpu or len(arrays) != len(self.io.outputs):
            for spec, value in zip(self.io.outputs, binding.get_outputs(), strict=True):
                host = value.numpy()
                if spec.name in arrays and arrays[spec.name].shape == host.shape:
                    np.copyto(arrays[spec.name], host)
                    outs[spec.name] = arrays[spec.name]
                else:
                    outs[spec.name] = host
        else:
            outs = arrays
        ms = (time.perf_counter() - t0) * 1e3
        return InferenceResult(labels=outs.get(contract.LABELS_NAME), confidence=outs.get(contract.CONFIDENCE_NAME),
                               logits=outs.get(contract.LOGITS_NAME), timings_ms={'infer': ms})

    def close(self) -> None:
        self._out_bufs.clear()
        self._session = None
        super().close()
