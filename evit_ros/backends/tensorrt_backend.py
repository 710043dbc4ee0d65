"""TensorRT backend: a cached engine checked against its sidecar, run with the named-tensor API.

Deliberately thin: everything that can run without a GPU (cache key, sidecar, rebuild decision,
shape/dtype mapping, argument checks) lives here in plain Python or in :mod:`evit_ros.export`; the
CUDA-only part is a handful of TensorRT and cuda-python runtime calls
(:mod:`evit_ros.device.cuda_runtime`), unit-tested with fakes. PyTorch is never imported.

* ``load()`` checks ``<engine>.json`` (:func:`evit_ros.export.engine_cache.check_engine`) against the
  installed TensorRT, the GPU, the precision and (if given) the ONNX sha256. On a mismatch it rebuilds
  through :func:`evit_ros.export.tensorrt_build.build_engine` when ``build_if_stale`` and an ONNX path
  are given (default builder options and ``timing.cache`` next to the engine; not for INT8, which needs
  calibration frames, nor DLA builds, whose options only the recorded command knows), else raises
  :class:`~evit_ros.errors.EngineCacheMismatch` whose message holds the exact rebuild command.
* Named-tensor API of TensorRT >= 8.5 (``num_io_tensors``, ``set_input_shape``, ``set_tensor_address``,
  ``execute_async_v3``). Device buffers (``cudaMalloc``) are allocated once for the largest batch; host
  input/output buffers are pinned (``cudaHostAlloc``) and reused; one CUDA stream, async copies.
* Optional CUDA-graph capture removes the per-layer launch overhead: one graph per batch size, each
  captured on its own execution context whose input shape never changes afterwards (a graph replayed
  after its context's shape changed would run with stale shapes).
* Every TensorRT call that reports failure by returning ``False``/``None`` raises BackendError.

Buffer contract (see :mod:`evit_ros.inference`): the arrays of an :class:`InferenceResult` are
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
from evit_ros.device import cuda_runtime
from evit_ros.device.identity import GpuIdentity
from evit_ros.errors import BackendError, BackendUnavailableError, CacheError, EngineCacheMismatch, EvitError
from evit_ros.export import engine_cache
from evit_ros.inference import InferenceBackend, InferenceResult, ModelIO, TensorSpec

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

# TensorRT DataType member name -> numpy dtype name (types a numpy host buffer can hold).
TRT_TO_NUMPY: dict[str, str] = {'FLOAT': 'float32', 'HALF': 'float16', 'INT8': 'int8', 'INT32': 'int32',
                                'INT64': 'int64', 'BOOL': 'bool', 'UINT8': 'uint8'}


def tensorrt_available(trt_module: Any = None) -> tuple[bool, str]:
    """(usable, reason): True only if a TensorRT runtime and cuda-python import and a CUDA device exists."""
    from evit_ros.export.tensorrt_build import import_tensorrt
    from evit_ros.export.tensorrt_precision import trt_version
    try:
        trt_mod = import_tensorrt(trt_module)
    except BackendUnavailableError as exc:
        return False, str(exc)
    what = f'{getattr(trt_mod, "__name__", "tensorrt")} {trt_version(trt_mod)}'
    count, why = cuda_runtime.device_count()
    if count < 1:
        return False, f'{what} imports but {why}'
    try:
        gpu = cuda_runtime.gpu_identity(0)
    except BackendError as exc:
        return False, f'{what} imports but {exc}'
    return True, f'{what} on {gpu.name}'


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
                 logger: logging.Logger | None = None, trt_module: Any = None) -> None:
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
        self.rebuilt = False
        self._reset()

    def _reset(self) -> None:
        self._trt: Any = None
        self._runtime: trt.Runtime | None = None
        self._engine: trt.ICudaEngine | None = None
        self._context: trt.IExecutionContext | None = None
        self._graph_contexts: dict[int, trt.IExecutionContext] = {}
        self._stream: cuda_runtime.Stream | None = None
        self._io: ModelIO | None = None
        self._dynamic = False
        self._cur_batch = 0
        self._d_in: cuda_runtime.DeviceBuffer | None = None
        self._h_in: cuda_runtime.PinnedBuffer | None = None
        self._d_out: dict[str, cuda_runtime.DeviceBuffer] = {}
        self._h_out: dict[str, cuda_runtime.PinnedBuffer] = {}
        self._graphs: dict[int, cuda_runtime.CudaGraph] = {}
        self._scratch: cuda_runtime.DeviceBuffer | None = None
        self._sidecar: dict[str, Any] = {}
        self._gpu = GpuIdentity('none', 'none')

    # -- load ------------------------------------------------------------------------------------
    def load(self) -> None:
        if self._loaded:
            return
        from evit_ros.export.tensorrt_build import import_tensorrt
        from evit_ros.export.tensorrt_precision import trt_version
        trt_mod = import_tensorrt(self._trt_arg)
        cuda_runtime.runtime()
        count, why = cuda_runtime.device_count()
        if count <= self.device:
            raise BackendUnavailableError(f'the tensorrt backend needs CUDA device {self.device} but this machine has '
                                          f'{count} ({why or "device index too high"}); use backend.type '
                                          'onnxruntime or auto')
        cuda_runtime.set_device(self.device)
        self._gpu = cuda_runtime.gpu_identity(self.device)
        self._trt = trt_mod
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
        self._log.info('tensorrt: %s loaded (TensorRT %s, %s sm %s, %d SMs, %s, batch %s, cuda_graph=%s)',
                       self.engine_path, trt_version(trt_mod), self._gpu.name, self._gpu.compute_capability,
                       self._gpu.sm_count, self.precision, f'1..{io.max_batch}' if self._dynamic else io.max_batch,
                       self.cuda_graph)

    def needs_build(self) -> bool:
        """True when :meth:`load` would build the engine: missing, or its sidecar does not match this TensorRT,
        GPU, ONNX or precision and a rebuild is allowed. Asks TensorRT and the GPU for their identity only (no
        deserialization), so the node can run the build of minutes in a child process a signal ends.

        False when loading would refuse instead (INT8/DLA, no ONNX) or cannot even ask: the load reports it.
        """
        if not self.build_if_stale or self.onnx_path is None:
            return False
        if not self.engine_path.is_file():
            return True
        from evit_ros.export.tensorrt_build import import_tensorrt
        from evit_ros.export.tensorrt_precision import trt_version
        try:
            version = trt_version(import_tensorrt(self._trt_arg))
            gpu = cuda_runtime.gpu_identity(self.device)
            engine_cache.check_engine(self.engine_path, self.onnx_path, trt_version=version, gpu=gpu,
                                      precision=self.precision)
        except EngineCacheMismatch as exc:
            return self._rebuilds(exc)
        except (EvitError, OSError):
            return False
        return False

    def _rebuilds(self, mismatch: EngineCacheMismatch) -> bool:
        """A stale engine is rebuilt automatically unless it is INT8 or for a DLA core (they need calibration
        frames or DLA options): the one rule of :meth:`needs_build` and :meth:`load`."""
        return not (self.precision == 'int8' or '--dla-core' in str(mismatch))

    def _checked_sidecar(self, version: str) -> dict[str, Any]:
        def check() -> dict[str, Any]:
            return engine_cache.check_engine(self.engine_path, self.onnx_path, trt_version=version, gpu=self._gpu,
                                             precision=self.precision)
        try:
            return check()
        except EngineCacheMismatch as exc:
            onnx_path = self.onnx_path
            if not self.build_if_stale or onnx_path is None:
                raise
            if not self._rebuilds(exc):
                raise EngineCacheMismatch(f'{exc} (INT8 and DLA engines are not rebuilt automatically: they need '
                                          'calibration frames or DLA options; run the command above)') from exc
            self._log.warning('tensorrt: %s; rebuilding from %s (this takes minutes on a Jetson)', exc,
                              onnx_path)
        self._check_engine_folder(Path(onnx_path))
        from evit_ros.export.tensorrt_build import build_engine
        build_engine(onnx_path, self.engine_path, precision=self.precision, trt_module=self._trt,
                     gpu=self._gpu, timing_cache=self.engine_path.parent / 'timing.cache',
                     opt_batch=self._recorded_opt_batch(), force=False)
        self.rebuilt = True
        return check()

    @property
    def opt_batch(self) -> int | None:
        """The batch the engine's optimization profile was tuned for (its sidecar's ``opt``), None if unknown; the
        node's batching policy (:mod:`evit_ros.pipeline.batching`) uses no larger runs."""
        try:
            shapes = engine_cache.read_sidecar(self.engine_path)['fields'].get('shapes', {})
            return int(shapes['profile']['opt'][0])
        except (EngineCacheMismatch, OSError, KeyError, TypeError, ValueError, IndexError):
            return None

    def _check_engine_folder(self, onnx_path: Path) -> None:
        """CacheError before a rebuild of minutes when the engine cannot be written (read-only, full, a file)."""
        from evit_ros.fileio import check_writable, os_error_text
        folder = self.engine_path.parent
        try:
            check_writable(folder, need_bytes=onnx_path.stat().st_size)
        except OSError as exc:
            command = engine_cache.build_command(onnx_path, '/writable/folder/' + self.engine_path.name,
                                                 self.precision)
            raise CacheError(f'cannot write the rebuilt engine into {folder}: {os_error_text(exc)}. Set '
                             'backend.engine_path to a file in a writable folder with space, or build it there '
                             f'beforehand: {command}') from exc

    def _recorded_opt_batch(self) -> int | None:
        """The profile's opt batch of the stale engine (the user's camera count), kept by a rebuild."""
        opt = self.opt_batch
        if opt is None:
            return None
        if self.onnx_path is None:
            return opt
        from evit_ros.export.onnx_export import read_metadata
        dynamic_max = contract.dynamic_max_batch(read_metadata(self.onnx_path))
        return min(opt, dynamic_max) if dynamic_max is not None else None

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
        self._context = self._new_context()

    def _new_context(self) -> trt.IExecutionContext:
        """An execution context. Where TensorRT lets us (10.x: USER_MANAGED + set_device_memory), every
        context shares one activation buffer: they all run one after another on our single stream, so the
        per-batch-size contexts of CUDA-graph mode cost no extra GPU memory (TensorRT 8.6: one each)."""
        engine = self._engine
        if engine is None:
            raise BackendError('internal: engine not deserialized')
        strategy = getattr(getattr(self._trt, 'ExecutionContextAllocationStrategy', None), 'USER_MANAGED', None)
        size = int(getattr(engine, 'device_memory_size_v2', 0) or 0)
        if strategy is None or size <= 0:
            context = engine.create_execution_context()
            _check(context, 'create_execution_context (out of GPU memory?)')
            return context
        context = engine.create_execution_context(strategy)
        _check(context, 'create_execution_context(USER_MANAGED)')
        if self._scratch is None:
            self._scratch = cuda_runtime.DeviceBuffer(size)
        context.set_device_memory(self._scratch.ptr, size)
        return context

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
        """Device + pinned host buffers for the largest batch, allocated once (their addresses never move)."""
        context, io = self._ctx(), self.io
        n = io.max_batch
        self._stream = cuda_runtime.Stream()
        in_shape = (n, *io.input.shape[1:])
        self._h_in = cuda_runtime.PinnedBuffer(in_shape, io.input.dtype)
        self._d_in = cuda_runtime.DeviceBuffer(self._h_in.nbytes)
        self._set_batch(context, n)
        self._cur_batch = n
        for spec in io.outputs:
            host = cuda_runtime.PinnedBuffer(self._context_shape(context, spec.name), spec.dtype)
            self._h_out[spec.name] = host
            self._d_out[spec.name] = cuda_runtime.DeviceBuffer(host.nbytes)
        self._bind(context)

    def _bind(self, context: trt.IExecutionContext) -> None:
        """Point every engine tensor of ``context`` at our device buffers."""
        if self._d_in is None:
            raise BackendError('internal: buffers not allocated')
        _check(context.set_tensor_address(self.io.input.name, self._d_in.ptr),
               f'set_tensor_address({self.io.input.name!r})')
        for name, buf in self._d_out.items():
            _check(context.set_tensor_address(name, buf.ptr), f'set_tensor_address({name!r})')

    def _context_shape(self, context: trt.IExecutionContext, name: str) -> tuple[int, ...]:
        dims = context.get_tensor_shape(name)
        shape = tuple(int(dims[j]) for j in range(len(dims)))
        if any(d < 0 for d in shape):
            raise BackendError(f'TensorRT cannot infer the shape of {name!r} ({shape})')
        return shape

    def _set_batch(self, context: trt.IExecutionContext, n: int) -> None:
        if self._dynamic:
            name = self.io.input.name
            shape = (n, *self.io.input.shape[1:])
            _check(context.set_input_shape(name, shape), f'set_input_shape({name!r}, {shape})')

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
        stream, h_in, d_in = self._stream, self._h_in, self._d_in
        if stream is None or h_in is None or d_in is None:
            raise BackendError('internal: buffers not allocated')
        t0 = time.perf_counter()
        h_in.array[:n] = batch
        stream.copy_htod(d_in.ptr, h_in.array, h_in.nbytes // io.max_batch * n)
        if self.cuda_graph:
            graph = self._graphs.get(n) or self._capture(n)
        else:
            graph = None
        if graph is not None:
            graph.launch(stream)
        else:
            context = self._ctx()
            if n != self._cur_batch:
                self._set_batch(context, n)
                self._cur_batch = n
            _check(context.execute_async_v3(stream.handle), 'execute_async_v3')
        views: dict[str, np.ndarray] = {}
        for spec in io.outputs:
            host = self._h_out[spec.name]
            stream.copy_dtoh(host.array, self._d_out[spec.name].ptr, host.nbytes // io.max_batch * n)
            views[spec.name] = host.array[:n]
        stream.synchronize()
        ms = (time.perf_counter() - t0) * 1000.0
        key = {contract.LABELS_NAME: 'labels', contract.CONFIDENCE_NAME: 'confidence',
               contract.LOGITS_NAME: 'logits'}
        return InferenceResult(**{key[name]: arr for name, arr in views.items()}, timings_ms={'infer': ms})

    def _capture(self, n: int) -> cuda_runtime.CudaGraph | None:
        """A CUDA graph of one run at batch ``n`` (None, with a warning, if capture is impossible).

        A graph bakes in the shapes its context had at capture; changing the context's input shape
        afterwards invalidates it. So with a dynamic batch every batch size gets its own execution
        context, set to that shape once and never changed, and its own graph.
        """
        stream = self._stream
        if stream is None:
            raise BackendError('internal: stream not created')
        if self._dynamic:
            context = self._graph_contexts.get(n)
            if context is None:
                context = self._new_context()
                self._set_batch(context, n)
                self._bind(context)
                self._graph_contexts[n] = context
        else:
            context = self._ctx()
        # one regular run first: TensorRT allocates lazily and must not do so during capture
        _check(context.execute_async_v3(stream.handle), 'execute_async_v3 (before CUDA graph capture)')
        stream.synchronize()
        try:
            stream.begin_capture()
        except BackendError as exc:
            return self._no_graphs(str(exc))
        try:
            ok = context.execute_async_v3(stream.handle)
        except BaseException:   # the stream must leave capture mode whatever happened inside it
            self._release(lambda: stream.end_capture().destroy(), 'CUDA graph')
            raise
        try:
            graph = stream.end_capture()
        except BackendError as exc:
            return self._no_graphs(str(exc))
        if ok is None or ok is False:   # TensorRT refused to run inside a capture: the graph is incomplete
            self._release(graph.destroy, 'CUDA graph')
            return self._no_graphs('execute_async_v3 returned False while capturing (see the TensorRT log above)')
        self._graphs[n] = graph
        return graph

    def _no_graphs(self, why: str) -> cuda_runtime.CudaGraph | None:
        """Capture failed: warn once and run every later batch the plain way (None: no graph)."""
        self._log.warning('tensorrt: CUDA graph capture failed (%s); running without graphs', why)
        self.cuda_graph = False
        return None

    def describe(self) -> dict[str, str]:
        d = {'backend': self.name, 'engine': str(self.engine_path), 'precision': self.precision,
             'cuda_graph': str(self.cuda_graph), 'rebuilt': str(self.rebuilt)}
        if self._trt is not None:
            d['tensorrt'] = str(getattr(self._trt, '__version__', 'unknown'))
            d['gpu'] = f'{self._gpu.name} (sm {self._gpu.compute_capability}, {self._gpu.sm_count} SMs)'
        if self._sidecar:
            d['cache_key'] = str(self._sidecar.get('key', ''))[:16]
            d['fp32_layers'] = str(len(self._sidecar.get('fp32_layers', [])))
            check = self._sidecar.get('fp32_inspection', {})
            d['fp32_check'] = (f'{check.get("checked_fp32", 0)} verified FP32, {len(check.get("violations", []))} not'
                               if check.get('inspected') else f'not inspected ({check.get("reason", "old sidecar")})')
        return d

    def close(self) -> None:
        """Drop graphs, contexts, engine, then the CUDA memory and the stream (TensorRT objects first)."""
        stream = self._stream
        if stream is not None:
            try:
                stream.synchronize()
            except BackendError as exc:  # a failed CUDA context must not prevent the release
                self._log.warning('tensorrt: stream synchronize during close failed: %s', exc)
        for graph in self._graphs.values():
            self._release(graph.destroy, 'CUDA graph')
        self._graphs.clear()
        self._graph_contexts.clear()
        self._context = None
        self._engine = None
        self._runtime = None
        buffers: list[Any] = [self._d_in, self._h_in, *self._d_out.values(), *self._h_out.values(), self._scratch]
        for buf in buffers:
            if buf is not None:
                self._release(buf.free, 'buffer')
        if stream is not None:
            self._release(stream.destroy, 'stream')
        self._reset()
        super().close()

    def _release(self, free: Any, what: str) -> None:
        try:
            free()
        except BackendError as exc:
            self._log.warning('tensorrt: releasing a %s failed: %s', what, exc)
