"""The few CUDA runtime calls the TensorRT path needs, through NVIDIA's ``cuda-python`` (not PyTorch).

Not a backend: the device memory, pinned host memory, stream, async copies and CUDA graphs that
:mod:`evit_ros.backends.tensorrt_backend` and the INT8 calibrator (:mod:`evit_ros.export.calibration`) use,
as in TensorRT's own Python samples (``cudaMalloc``, ``cudaHostAlloc``, ``cudaStreamCreate``,
``cudaMemcpyAsync``). PyTorch is never imported here: on a Jetson it is a separate NVIDIA wheel, and its
CUDA initialisation alone costs hundreds of MB on an 8 GB Orin.

``cuda-python`` returns a tuple from every call whose first element is the error code; :func:`call`
turns a failure into :class:`~evit_ros.errors.BackendError` naming the call and the CUDA error. Where the
driver itself is missing, cuda-python 12.2 and 12.6 raise ``RuntimeError('Function "cuInit" not found')``
instead of returning ``cudaErrorInsufficientDriver`` (12.9 and 13.x): :func:`call` turns that into the same
``BackendError``, so every ``except BackendError`` (the CUDA-graph fallback, ``close()``, the release paths)
sees it. Both messages name the missing driver and what to do. The runtime module is ``cuda.cudart`` in
cuda-python 12.2, ``cuda.bindings.runtime`` from 12.6 on (12.6 to 12.9 keep ``cuda.cudart`` as an alias,
13.x removes it); both are accepted. mypy checks these calls against stubs generated from cuda-python's
own source (``tools/make_cuda_stubs.py``).
"""
from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Any, ParamSpec

import numpy as np

from evit_ros.device.identity import GpuIdentity, board_model
from evit_ros.errors import BackendError, BackendUnavailableError

try:
    from cuda.bindings import runtime as cudart
except ImportError:
    try:
        from cuda import cudart  # type: ignore[no-redef]  # cuda-python < 12.6
    except ImportError:
        cudart = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
P = ParamSpec('P')

INSTALL_HINT = ('install NVIDIA cuda-python for your CUDA major version (JetPack 6: '
                '`pip install "cuda-python>=12.2,<12.3"`, JetPack 7: `pip install "cuda-python>=13,<14"`)')
DRIVER_HINT = ('install the NVIDIA driver (on a Jetson it comes with JetPack; check that libcuda.so.1 loads and '
               'that the user is in the `video`/`render` group), or pick a cuda-python whose CUDA version the '
               'driver supports (`nvidia-smi` shows it); without a GPU use backend.type onnxruntime or auto')
# error codes that mean "no usable driver / device" rather than a bug in the call
_DRIVER_ERRORS = ('cudaErrorInsufficientDriver', 'cudaErrorNoDevice', 'cudaErrorInitializationError',
                  'cudaErrorSystemDriverMismatch', 'cudaErrorCompatNotSupportedOnDevice', 'cudaErrorStubLibrary',
                  'cudaErrorDevicesUnavailable')


def runtime() -> Any:
    """The cuda-python runtime module; BackendUnavailableError with the install line if it is missing."""
    if cudart is None:
        raise BackendUnavailableError(f'cuda-python is not installed; {INSTALL_HINT}')
    return cudart


def bindings() -> tuple[str, str]:
    """(cuda-python version, runtime module name), ('', '') when cuda-python does not import."""
    if cudart is None:
        return '', ''
    from importlib import metadata
    version = ''
    for dist in ('cuda-python', 'cuda-bindings'):
        try:
            version = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    return version, str(getattr(cudart, '__name__', type(cudart).__name__))


def _error_text(err: Any) -> str:
    name = str(getattr(err, 'name', err))
    try:
        res = cudart.cudaGetErrorString(err)
        if res[0] == cudart.cudaError_t.cudaSuccess:
            msg = res[1]
            name = f'{name}: {msg.decode() if isinstance(msg, bytes) else msg}'
    except (TypeError, ValueError, AttributeError, RuntimeError):   # RuntimeError: no driver (cuda-python 12.2/12.6)
        pass
    if any(code in name for code in _DRIVER_ERRORS):
        name = f'{name}; the NVIDIA driver is missing or older than this CUDA runtime: {DRIVER_HINT}'
    return name


def _no_driver(what: str, exc: BaseException) -> BackendError:
    version = bindings()[0] or 'unknown version'
    return BackendError(f'CUDA {what} failed: no usable NVIDIA driver (cuda-python {version}: {exc}); {DRIVER_HINT}')


def check(result: tuple[Any, ...], what: str) -> Any:
    """``result`` of a cuda-python call: raise on an error code, else return the value(s) after it."""
    err = result[0]
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f'CUDA {what} failed ({_error_text(err)})')
    if len(result) == 1:
        return None
    return result[1] if len(result) == 2 else result[1:]


def call(what: str, fn: Callable[P, tuple[Any, ...]], *args: P.args, **kwargs: P.kwargs) -> Any:
    """``fn(*args)`` through :func:`check`. A ``RuntimeError`` (cuda-python 12.2/12.6 without a driver entry
    point) becomes the same ``BackendError`` an error code gives."""
    try:
        result = fn(*args, **kwargs)
    except RuntimeError as exc:
        raise _no_driver(what, exc) from exc
    return check(result, what)


def device_count() -> tuple[int, str]:
    """(number of CUDA devices, reason when 0) without raising: for backend auto-selection."""
    if cudart is None:
        return 0, f'cuda-python is not installed ({INSTALL_HINT})'
    try:
        err, n = cudart.cudaGetDeviceCount()
    except RuntimeError as exc:   # no driver library at all
        return 0, f'the CUDA driver cannot be loaded ({exc}); {DRIVER_HINT}'
    if err != cudart.cudaError_t.cudaSuccess:
        return 0, f'no CUDA device ({_error_text(err)})'
    return int(n), '' if n else f'no CUDA device; {DRIVER_HINT}'


def gpu_identity(device: int = 0) -> GpuIdentity:
    """Name, compute capability, SM count, total memory and board model of ``device``."""
    rt = runtime()
    props = call(f'cudaGetDeviceProperties({device})', rt.cudaGetDeviceProperties, device)
    raw = props.name
    name = raw.split(b'\0', 1)[0].decode(errors='replace') if isinstance(raw, bytes) else str(raw)
    return GpuIdentity(name=name.strip(), compute_capability=f'{int(props.major)}.{int(props.minor)}',
                       sm_count=int(props.multiProcessorCount), total_memory_mb=int(props.totalGlobalMem) >> 20,
                       board=board_model())


def set_device(device: int) -> None:
    call(f'cudaSetDevice({device})', runtime().cudaSetDevice, device)


class DeviceBuffer:
    """``nbytes`` of device memory (``cudaMalloc``); ``ptr`` is what TensorRT's set_tensor_address takes."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr = int(call(f'cudaMalloc({self.nbytes})', runtime().cudaMalloc, max(1, self.nbytes)))

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            call('cudaFree', runtime().cudaFree, ptr)


class PinnedBuffer:
    """Page-locked host memory (``cudaHostAlloc``) seen as a numpy array, for truly async copies."""

    def __init__(self, shape: tuple[int, ...], dtype: str | np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(d) for d in shape)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        rt = runtime()
        self.ptr = int(call(f'cudaHostAlloc({self.nbytes})', rt.cudaHostAlloc, max(1, self.nbytes),
                            rt.cudaHostAllocDefault))
        raw = (ctypes.c_byte * max(1, self.nbytes)).from_address(self.ptr)
        flat = np.frombuffer(memoryview(raw).cast('B'), dtype=np.uint8, count=self.nbytes)
        self.array: np.ndarray = flat.view(self.dtype).reshape(self.shape)

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            self.array = np.empty(0, self.dtype)   # no view may outlive the memory
            call('cudaFreeHost', runtime().cudaFreeHost, ptr)


class Stream:
    """A CUDA stream; ``handle`` is the integer TensorRT's ``execute_async_v3`` takes."""

    def __init__(self) -> None:
        self._stream = call('cudaStreamCreate', runtime().cudaStreamCreate)
        self.handle = int(self._stream)

    def synchronize(self) -> None:
        call('cudaStreamSynchronize', runtime().cudaStreamSynchronize, self._stream)

    def copy_htod(self, dst: int, src: np.ndarray, nbytes: int) -> None:
        rt = runtime()
        call('cudaMemcpyAsync(host to device)', rt.cudaMemcpyAsync, dst, src.ctypes.data, nbytes,
             rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream)

    def copy_dtoh(self, dst: np.ndarray, src: int, nbytes: int) -> None:
        rt = runtime()
        call('cudaMemcpyAsync(device to host)', rt.cudaMemcpyAsync, dst.ctypes.data, src, nbytes,
             rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream)

    def begin_capture(self) -> None:
        rt = runtime()
        call('cudaStreamBeginCapture', rt.cudaStreamBeginCapture, self._stream,
             rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)

    def end_capture(self) -> CudaGraph:
        rt = runtime()
        graph = call('cudaStreamEndCapture', rt.cudaStreamEndCapture, self._stream)
        try:
            exec_ = call('cudaGraphInstantiate', rt.cudaGraphInstantiate, graph, 0)
        except BackendError:
            try:
                call('cudaGraphDestroy', rt.cudaGraphDestroy, graph)
            except BackendError as exc:
                log.warning('destroying a CUDA graph that failed to instantiate failed: %s', exc)
            raise
        return CudaGraph(graph, exec_)

    def destroy(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            call('cudaStreamDestroy', runtime().cudaStreamDestroy, stream)


class CudaGraph:
    """An instantiated CUDA graph captured on a stream."""

    def __init__(self, graph: Any, exec_: Any) -> None:
        self._graph, self._exec = graph, exec_

    def launch(self, stream: Stream) -> None:
        call('cudaGraphLaunch', runtime().cudaGraphLaunch, self._exec, stream._stream)

    def destroy(self) -> None:
        if self._exec is not None:
            exec_, graph, self._exec, self._graph = self._exec, self._graph, None, None
            rt = runtime()
            try:
                call('cudaGraphExecDestroy', rt.cudaGraphExecDestroy, exec_)
            finally:
                call('cudaGraphDestroy', rt.cudaGraphDestroy, graph)


class Event:
    """A CUDA event: marks a point on a stream, for GPU-side timings (``elapsed_ms``) and waits."""

    def __init__(self) -> None:
        self._event = call('cudaEventCreate', runtime().cudaEventCreate)

    def record(self, stream: Stream) -> None:
        call('cudaEventRecord', runtime().cudaEventRecord, self._event, stream._stream)

    def synchronize(self) -> None:
        call('cudaEventSynchronize', runtime().cudaEventSynchronize, self._event)

    def elapsed_ms(self, start: Event) -> float:
        """Milliseconds from ``start`` to this event (both recorded, this one completed)."""
        return float(call('cudaEventElapsedTime', runtime().cudaEventElapsedTime, start._event, self._event))

    def destroy(self) -> None:
        if self._event is not None:
            event, self._event = self._event, None
            call('cudaEventDestroy', runtime().cudaEventDestroy, event)
