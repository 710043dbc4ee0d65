"""TensorRT backend: a cached engine checked against its sidecar, run with the named-tensor API.

Deliberately thin: everything that can run without a GPU (cache key, sidecar, rebuild decision,
shape/dtype mapping, argument checks) lives here in plain Python or in :mod:`evit_ros.export`; the
CUDA-only part is a handful of TensorRT and ``torch.cuda`` calls, unit-tested with fakes.

* ``load()`` checks ``<engine>.json`` (:func:`evit_ros.export.engine_cache.check_engine`) against the
  installed TensorRT, the GPU, the precision and (if given) the ONNX sha256. On a mismatch it rebuilds
  through :func:`evit_ros.export.tensorrt_build.build_engine` when ``build_if_stale`` and an ONNX path
  are given (default builder options and ``timing.cache`` next to the engine; not for INT8, which needs
  calibration frames, nor DLA builds, whose options only the recorded command knows), else raises
  :class:`~evit_ros.errors.EngineCacheMismatch` whose message holds the exact rebuild command.
* Named-tensor API of TensorRT >= 8.5 (``num_io_tensors``, ``set_input_shape``, ``set_tensor_address``,
  ``execute_async_v3``). Device buffers are torch CUDA tensors (no pycuda) allocated once for the
  largest batch; host input/output buffers are pinned and reused; one ``torch.cuda.Stream``.
* Optional CUDA-graph capture (one graph per batch size) removes the per-layer launch overhead.
* Every TensorRT call that reports failure by returning ``False``/``None`` raises BackendError.

Buffer contract (see :mod:`evit_ros.backends.base`): the arrays of an :class:`InferenceResult` are
views of the pinned host buffers and are overwritten by the next ``infer``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_ros import contract
from evit_ros.backends.base import InferenceBackend, InferenceResult, ModelIO, TensorSpec
from evit_ros.errors import BackendError, BackendUnavailableError, EngineCacheMismatch
from evit_ros.export import engine_cache

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

# TensorRT DataType member name -> numpy dtype name (types a numpy host buffer can hold).
TRT_TO_NUMPY: dict[str, str] = {'FLOAT': 'float32', 'HALF': 'float16', 'INT8': 'int8', 'INT32': 'int32',
                                'INT64': 'int64', 'BOOL': 'bool', 'UINT8': 'uint8'}


def tensorrt_available(trt_module: Any = None, torch_module: Any = None) -> tuple[bool, str]:
    """(usable, reason): True only if a TensorRT runtime imports and torch sees a CUDA GPU."""
    from evit_ros.export.tensorrt_build import import_tensorrt, trt_version
    try:
        trt_mod = import_tensorrt(trt_module)
    except BackendUnavailableError as exc:
        return False, str(exc)
    what = f'{getattr(trt_mod, "__name__", "tensorrt")} {trt_version(trt_mod)}'
    try:
        torch_mod = torch_module if torch_module is not None else __import__('torch')
    except ImportError as exc:
        return False, f'{what} imports but PyTorch (needed for CUDA buffers) does not: {exc}'
    if not torch_mod.cuda.is_available():
        return False, f'{what} imports but there is no CUDA GPU (torch.cuda.is_available() is False)'
    return True, f'{what} on {torch_mod.cuda.get_device_name(0)}'


def numpy_dtype(trt_dtype: Any) -> str:
    """numpy dtype name of a TensorRT DataType; BackendError for types numpy cannot hold (BF16, FP8, ...)."""
    name = str(getattr(trt_dtype, 'name', trt_dtype)).rsplit('.', 1)[-1]
    if name not in TRT_TO_NUMPY:
        raise BackendError(f'engine tensor type {name} has no numpy equivalent; re-export with uint8/int32/float32 '
                           'graph inputs and outputs')
    return TRT_TO_NUMPY[name]


def _check(ok: object, what: str) -> None:
    """TensorRT reports many failures by returning False/None (details go to its logger)."""
    if ok is None or ok is False:
        raise BackendError(f'TensorRT {what} failed (see the TensorRT log above)')


class TensorRTBackend(InferenceBackend):
    """Runs a serialized TensorRT engine; see the module docstring."""

    name = 'tensorrt'

    def __init__(self, engine_path: str | Path, *, onnx_path: str | Path | None = None, precision: str = 'fp16',
                 build_if_stale: bool = True, cuda_graph: bool = False, device: int = 0,
                 logger: logging.Logger | None = None, trt_module: Any = None, torch_module: Any = None) -> None:
        super().__init__()
        if not str(engine_path):
            raise BackendError('backend.engine_path is empty; set it to the engine file (see engines/README.md)')
        self.engine_path = Path(engine_path)
        self.onnx_path = Path(onnx_path) if onnx_path else None
        self.precision = precision
        self.build_if_stale = build_if_stale
        self.cuda_graph = cuda_graph
        self.device = device
        self._log = logger or log
        self._trt_arg = trt_module
        self._torch_arg = torch_module
        self.rebuilt = False
        self._reset()

    def _reset(self) -> None:
        self._trt: Any = None
        self._torch: Any = None
        self._runtime: trt.Runtime | None = None
        self._engine: trt.ICudaEngine | None = None
        self._context: trt.IExecutionContext | None = None
        self._stream: Any = None
        self._io: ModelIO | None = None
        self._dynamic = False
        self._cur_batch = 0
        self._d_in: Any = None
        self._h_in: Any = None
        self._d_out: dict[str, Any] = {}
        self._h_out: dict[str, Any] = {}
        self._graphs: dict[int, Any] = {}
        self._sidecar: dict[str, Any] = {}
        self._gpu = ('none', 'none')

    # -- load ------------------------------------------------------------------------------------
    def load(self) -> None:
        if self._loaded:
            return
        from evit_ros.export.tensorrt_build import import_tensorrt, trt_version
        trt_mod = import_tensorrt(self._trt_arg)
        torch_mod = self._torch_arg if self._torch_arg is not None else _import_torch()
        if not torch_mod.cuda.is_available():
            raise BackendUnavailableError('the tensorrt backend needs a CUDA GPU (torch.cuda.is_available() is '
                                          'False); use backend.type onnxruntime or auto')
        torch_mod.cuda.set_device(self.device)
        major, minor = torch_mod.cuda.get_device_capability(self.device)
        self._gpu = (str(torch_mod.cuda.get_device_name(self.device)), f'{major}.{minor}')
        self._trt, self._torch = trt_mod, torch_mod
        try:
            self._sidecar = self._checked_sidecar(trt_version(trt_mod))
            self._deserialize()
            self._io = self._model_io()
            self._allocate()
        except BaseException:
            self.close()
            raise
        self._loaded = True
        io = self._io
        self._log.info('tensorrt: %s loaded (TensorRT %s, %s %s, %s, batch %s, cuda_graph=%s)', self.engine_path,
                       trt_version(trt_mod), self._gpu[0], self._gpu[1], self.precision,
                       f'1..{io.max_batch}' if self._dynamic else io.max_batch, self.cuda_graph)

    def _checked_sidecar(self, version: str) -> dict[str, Any]:
        def check() -> dict[str, Any]:
            return engine_cache.check_engine(self.engine_path, self.onnx_path, trt_version=version,
                                             gpu_name=self._gpu[0], compute_capability=self._gpu[1],
                                             precision=self.precision)
        try:
            return check()
        except EngineCacheMismatch as exc:
            onnx_path = self.onnx_path
            if not self.build_if_stale or onnx_path is None:
                raise
            if self.precision == 'int8' or '--dla-core' in str(exc):
                raise EngineCacheMismatch(f'{exc} (INT8 and DLA engines are not rebuilt automatically: they need '
                                          'calibration frames or DLA options; run the command above)') from exc
            self._log.warning('tensorrt: %s; rebuilding from %s (this takes minutes on a Jetson)', exc,
                              onnx_path)
        from evit_ros.export.tensorrt_build import build_engine
        build_engine(onnx_path, self.engine_path, precision=self.precision, trt_module=self._trt,
                     gpu=self._gpu, timing_cache=self.engine_path.parent / 'timing.cache')
        self.rebuilt = True
        return check()

    def _deserialize(self) -> None:
        trt_mod = self._trt
        runtime: trt.Runtime | None = trt_mod.Runtime(trt_mod.Logger(trt_mod.Logger.WARNING))
        if runtime is None:
            raise BackendError('TensorRT could not create a Runtime (CUDA driver missing or too old?)')
        self._runtime = runtime
        data = self.engine_path.read_bytes()
        expected = self._sidecar.get('engine_sha256')
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise EngineCacheMismatch(f'engine {self.engine_path} changed after its sidecar was checked (another '
                                      'process is rebuilding it?); load again when the build has finished')
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            cmd = self._sidecar.get('build_command', 'evit-ros build-engine ...')
            raise BackendError(f'TensorRT could not deserialize {self.engine_path} (see the TensorRT log above; '
                               f'built by another TensorRT or for another GPU?). Rebuild it with: {cmd}')
        self._engine = engine
        context = engine.create_execution_context()
        _check(context, 'create_execution_context (out of GPU memory?)')
        self._context = context

    def _ctx(self) -> trt.IExecutionContext:
        if self._context is None or self._io is None:
            raise BackendError('tensorrt backend used before load(): call load() or use it as a context manager')
        return self._context

    def _model_io(self) -> ModelIO:
        engine = self._engine
        if engine is None:
            raise BackendError('internal: engine not deserialized')
        trt_mod = self._trt
        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dims = engine.get_tensor_shape(name)
            spec = TensorSpec(name, tuple(int(dims[j]) for j in range(len(dims))),
                              numpy_dtype(engine.get_tensor_dtype(name)))
            (inputs if engine.get_tensor_mode(name) == trt_mod.TensorIOMode.INPUT else outputs).append(spec)
        if len(inputs) != 1 or inputs[0].name != contract.INPUT_NAME:
            raise BackendError(f'engine {self.engine_path} has inputs {[s.name for s in inputs]}; expected one '
                               f'{contract.INPUT_NAME!r} (export it with `evit-ros export`)')
        inp = inputs[0]
        meta = self._sidecar.get('model_metadata', {})
        head = meta.get(contract.META_HEAD, '')
        wanted = contract.HEAD_OUTPUTS.get(head)
        if wanted is None or sorted(wanted) != sorted(s.name for s in outputs):
            raise BackendError(f'engine {self.engine_path} outputs {[s.name for s in outputs]} do not match its head '
                               f'{head!r} in {engine_cache.sidecar_path(self.engine_path)}; rebuild the engine')
        by_name = {s.name: s for s in outputs}
        outputs = [by_name[n] for n in wanted]
        self._dynamic = inp.shape[0] < 0
        if any(d < 0 for d in inp.shape[1:]):
            raise BackendError(f'engine input {inp.name} has dynamic spatial dims {inp.shape}; export static H, W')
        if self._dynamic:
            profile = engine.get_tensor_profile_shape(inp.name, 0)
            _check(profile, f'get_tensor_profile_shape({inp.name!r})')
            max_batch = int(profile[2][0])
        else:
            max_batch = inp.shape[0]
        fmt = meta.get(contract.META_INPUT_FORMAT, 'uint8-nhwc' if inp.dtype == 'uint8' else 'float-nchw')
        names = tuple(json.loads(meta.get(contract.META_CLASSES, '[]')))
        colors = tuple((int(c[0]), int(c[1]), int(c[2])) for c in json.loads(meta.get(contract.META_COLORS, '[]')))
        return ModelIO(model_name=meta.get(contract.META_MODEL, self.engine_path.stem), head=head, input_format=fmt,
                       input=inp, outputs=tuple(outputs), max_batch=max_batch, class_names=names,
                       class_colors=colors)

    def _allocate(self) -> None:
        """Device + pinned host buffers for the largest batch; addresses set once (they never move)."""
        torch, context, io = self._torch, self._ctx(), self.io
        n = io.max_batch
        self._stream = torch.cuda.Stream(device=self.device)
        in_shape = (n, *io.input.shape[1:])
        in_dtype = getattr(torch, io.input.dtype)
        self._d_in = torch.empty(in_shape, dtype=in_dtype, device=f'cuda:{self.device}')
        self._h_in = torch.empty(in_shape, dtype=in_dtype, pin_memory=True)
        _check(context.set_tensor_address(io.input.name, int(self._d_in.data_ptr())),
               f'set_tensor_address({io.input.name!r})')
        self._set_batch(n)
        for spec in io.outputs:
            shape = self._context_shape(spec.name)
            dtype = getattr(torch, spec.dtype)
            self._d_out[spec.name] = torch.empty(shape, dtype=dtype, device=f'cuda:{self.device}')
            self._h_out[spec.name] = torch.empty(shape, dtype=dtype, pin_memory=True)
            _check(context.set_tensor_address(spec.name, int(self._d_out[spec.name].data_ptr())),
                   f'set_tensor_address({spec.name!r})')

    def _context_shape(self, name: str) -> tuple[int, ...]:
        dims = self._ctx().get_tensor_shape(name)
        shape = tuple(int(dims[j]) for j in range(len(dims)))
        if any(d < 0 for d in shape):
            raise BackendError(f'TensorRT cannot infer the shape of {name!r} ({shape}) for batch {self._cur_batch}')
        return shape

    def _set_batch(self, n: int) -> None:
        if n == self._cur_batch:
            return
        if self._dynamic:
            name = self.io.input.name
            shape = (n, *self.io.input.shape[1:])
            _check(self._ctx().set_input_shape(name, shape), f'set_input_shape({name!r}, {shape})')
        self._cur_batch = n

    # -- inference -------------------------------------------------------------------------------
    @property
    def io(self) -> ModelIO:
        if self._io is None:
            raise BackendError('tensorrt backend used before load(): call load() or use it as a context manager')
        return self._io

    def infer(self, batch: np.ndarray) -> InferenceResult:
        self._require_loaded()
        io = self.io
        want = io.input.shape[1:]
        if not isinstance(batch, np.ndarray) or batch.ndim != len(io.input.shape) or batch.shape[1:] != want:
            got = getattr(batch, 'shape', type(batch).__name__)
            raise BackendError(f'tensorrt: batch shape {got} does not match the engine input '
                               f'[N, {", ".join(map(str, want))}]')
        if batch.dtype != np.dtype(io.input.dtype):
            raise BackendError(f'tensorrt: batch dtype {batch.dtype} != engine input {io.input.dtype}')
        n = int(batch.shape[0])
        if not (1 <= n <= io.max_batch) or (not self._dynamic and n != io.max_batch):
            allowed = f'1..{io.max_batch}' if self._dynamic else str(io.max_batch)
            raise BackendError(f'tensorrt: batch of {n} frames, the engine takes {allowed}; rebuild with '
                               '`evit-ros export --max-batch N` for more cameras')
        torch, stream, context = self._torch, self._stream, self._ctx()
        t0 = time.perf_counter()
        self._set_batch(n)
        h_in = self._h_in[:n]
        h_in.numpy()[...] = batch
        with torch.cuda.stream(stream):
            self._d_in[:n].copy_(h_in, non_blocking=True)
            graph = self._graphs.get(n) if self.cuda_graph else None
            if graph is None and self.cuda_graph:
                graph = self._capture(n)
            if graph is not None:
                graph.replay()
            else:
                _check(context.execute_async_v3(stream.cuda_stream), 'execute_async_v3')
            views: dict[str, np.ndarray] = {}
            for spec in io.outputs:
                host = self._h_out[spec.name][:n]
                host.copy_(self._d_out[spec.name][:n], non_blocking=True)
                views[spec.name] = host.numpy()
        stream.synchronize()
        ms = (time.perf_counter() - t0) * 1000.0
        key = {contract.LABELS_NAME: 'labels', contract.CONFIDENCE_NAME: 'confidence',
               contract.LOGITS_NAME: 'logits'}
        return InferenceResult(**{key[name]: arr for name, arr in views.items()}, timings_ms={'infer': ms})

    def _capture(self, n: int) -> Any:
        """Capture execute_async_v3 for batch ``n`` into a CUDA graph (None, with a warning, if impossible)."""
        torch, context, stream = self._torch, self._ctx(), self._stream
        # one regular run first: TensorRT allocates lazily and must not do so during capture
        _check(context.execute_async_v3(stream.cuda_stream), 'execute_async_v3 (before CUDA graph capture)')
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=stream):
                ok = context.execute_async_v3(stream.cuda_stream)
        except RuntimeError as exc:
            self._log.warning('tensorrt: CUDA graph capture failed (%s); running without graphs', exc)
            self.cuda_graph = False
            return None
        _check(ok, 'execute_async_v3 during CUDA graph capture')
        self._graphs[n] = graph
        return graph

    def describe(self) -> dict[str, str]:
        d = {'backend': self.name, 'engine': str(self.engine_path), 'precision': self.precision,
             'cuda_graph': str(self.cuda_graph), 'rebuilt': str(self.rebuilt)}
        if self._trt is not None:
            d['tensorrt'] = str(getattr(self._trt, '__version__', 'unknown'))
            d['gpu'] = f'{self._gpu[0]} (sm {self._gpu[1]})'
        if self._sidecar:
            d['cache_key'] = str(self._sidecar.get('key', ''))[:16]
            d['fp32_layers'] = str(len(self._sidecar.get('fp32_layers', [])))
        return d

    def close(self) -> None:
        """Drop the graphs, context, engine and buffers (TensorRT objects before the CUDA memory)."""
        if self._stream is not None:
            try:
                self._stream.synchronize()
            except RuntimeError as exc:  # a failed CUDA context must not prevent the release
                self._log.warning('tensorrt: stream synchronize during close failed: %s', exc)
        self._graphs.clear()
        self._context = None
        self._engine = None
        self._runtime = None
        self._reset()
        super().close()


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError(f'the tensorrt backend needs PyTorch with CUDA for its buffers: {exc}') from exc
    return torch
