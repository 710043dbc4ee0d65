"""The few CUDA runtime calls the TensorRT path needs, through NVIDIA's ``cuda-python`` (not PyTorch).

Not a backend: the device memory, pinned host memory, stream, async copies and CUDA graphs that
:mod:`evit_ros.backends.tensorrt_backend` and the INT8 calibrator (:mod:`evit_ros.export.calibration`) use,
as in TensorRT's own Python samples (``cudaMalloc``, ``cudaHostAlloc``, ``cudaStreamCreate``,
``cudaMemcpyAsync``). PyTorch is never imported here: on a Jetson it is a separate NVIDIA wheel, and its
CUDA initialisation alone costs hundreds of MB on an 8 GB Orin.

``cuda-python`` returns a tuple from every call whose first element is the error code; :func:`check`
turns a failure into :class:`~evit_ros.errors.BackendError` naming the call and the CUDA error. The
runtime module moved from ``cuda.cudart`` to ``cuda.bindings.runtime`` in cuda-python 12.6; both are
accepted. mypy checks these calls against stubs generated from cuda-python's own source
(``tools/make_cuda_stubs.py``).
"""
from __future__ import annotations

import ctypes
import logging
from typing import Any

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

INSTALL_HINT = ('install NVIDIA cuda-python for your CUDA major version (JetPack 6: '
                '`pip install "cuda-python>=12.6,<13"`, JetPack 7: `pip install "cuda-python>=13,<14"`)')


def runtime() -> Any:
    """The cuda-python runtime module; BackendUnavailableError with the install line if it is missing."""
    if cudart is None:
        raise BackendUnavailableError(f'cuda-python is not installed; {INSTALL_HINT}')
    return cudart


def _error_text(err: Any) -> str:
    name = str(getattr(err, 'name', err))
    try:
        res = cudart.cudaGetErrorString(err)
        if res[0] == cudart.cudaError_t.cudaSuccess:
            msg = res[1]
            return f'{name}: {msg.decode() if isinstance(msg, bytes) else msg}'
    except (TypeError, ValueError, AttributeError):
        pass
    return name


def check(result: tuple[Any, ...], what: str) -> Any:
    """``result`` of a cuda-python call: raise on an error code, else return the value(s) after it."""
    err = result[0]
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f'CUDA {what} failed ({_error_text(err)})')
    if len(result) == 1:
        return None
    return result[1] if len(result) == 2 else result[1:]


def device_count() -> tuple[int, str]:
    """(number of CUDA devices, reason when 0) without raising: for backend auto-selection."""
    if cudart is None:
        return 0, f'cuda-python is not installed ({INSTALL_HINT})'
    try:
        err, n = cudart.cudaGetDeviceCount()
    except RuntimeError as exc:   # no driver library at all
        return 0, f'the CUDA driver cannot be loaded ({exc})'
    if err != cudart.cudaError_t.cudaSuccess:
        return 0, f'no CUDA device ({_error_text(err)})'
    return int(n), '' if n else 'no CUDA device'


def gpu_identity(device: int = 0) -> GpuIdentity:
    """Name, compute capability, SM count, total memory and board model of ``device``."""
    rt = runtime()
    props = check(rt.cudaGetDeviceProperties(device), f'cudaGetDeviceProperties({device})')
    raw = props.name
    name = raw.split(b'\0', 1)[0].decode(errors='replace') if isinstance(raw, bytes) else str(raw)
    return GpuIdentity(name=name.strip(), compute_capability=f'{int(props.major)}.{int(props.minor)}',
                       sm_count=int(props.multiProcessorCount), total_memory_mb=int(props.totalGlobalMem) >> 20,
                       board=board_model())


def set_device(device: int) -> None:
    check(runtime().cudaSetDevice(device), f'cudaSetDevice({device})')


class DeviceBuffer:
    """``nbytes`` of device memory (``cudaMalloc``); ``ptr`` is what TensorRT's set_tensor_address takes."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr = int(check(runtime().cudaMalloc(max(1, self.nbytes)), f'cudaMalloc({self.nbytes})'))

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            check(cudart.cudaFree(ptr), 'cudaFree')


class PinnedBuffer:
    """Page-locked host memory (``cudaHostAlloc``) seen as a numpy array, for truly async copies."""

    def __init__(self, shape: tuple[int, ...], dtype: str | np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(d) for d in shape)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.ptr = int(check(runtime().cudaHostAlloc(max(1, self.nbytes), cudart.cudaHostAllocDefault),
                             f'cudaHostAlloc({self.nbytes})'))
        raw = (ctypes.c_byte * max(1, self.nbytes)).from_address(self.ptr)
        flat = np.frombuffer(memoryview(raw).cast('B'), dtype=np.uint8, count=self.nbytes)
        self.array: np.ndarray = flat.view(self.dtype).reshape(self.shape)

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            self.array = np.empty(0, self.dtype)   # no view may outlive the memory
            check(cudart.cudaFreeHost(ptr), 'cudaFreeHost')


class Stream:
    """A CUDA stream; ``handle`` is the integer TensorRT's ``execute_async_v3`` takes."""

    def __init__(self) -> None:
        self._stream = check(runtime().cudaStreamCreate(), 'cudaStreamCreate')
        self.handle = int(self._stream)

    def synchronize(self) -> None:
        check(cudart.cudaStreamSynchronize(self._stream), 'cudaStreamSynchronize')

    def copy_htod(self, dst: int, src: np.ndarray, nbytes: int) -> None:
        check(cudart.cudaMemcpyAsync(dst, src.ctypes.data, nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                     self._stream), 'cudaMemcpyAsync(host to device)')

    def copy_dtoh(self, dst: np.ndarray, src: int, nbytes: int) -> None:
        check(cudart.cudaMemcpyAsync(dst.ctypes.data, src, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                     self._stream), 'cudaMemcpyAsync(device to host)')

    def begin_capture(self) -> None:
        check(cudart.cudaStreamBeginCapture(self._stream,
                                            cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
              'cudaStreamBeginCapture')

    def end_capture(self) -> CudaGraph:
        graph = check(cudart.cudaStreamEndCapture(self._stream), 'cudaStreamEndCapture')
        try:
            exec_ = check(cudart.cudaGraphInstantiate(graph, 0), 'cudaGraphInstantiate')
        except BackendError:
            cudart.cudaGraphDestroy(graph)
            raise
        return CudaGraph(graph, exec_)

    def destroy(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            check(cudart.cudaStreamDestroy(stream), 'cudaStreamDestroy')


class CudaGraph:
    """An instantiated CUDA graph captured on a stream."""

    def __init__(self, graph: Any, exec_: Any) -> None:
        self._graph, self._exec = graph, exec_

    def launch(self, stream: Stream) -> None:
        check(cudart.cudaGraphLaunch(self._exec, stream._stream), 'cudaGraphLaunch')

    def destroy(self) -> None:
        if self._exec is not None:
            exec_, graph, self._exec, self._graph = self._exec, self._graph, None, None
            check(cudart.cudaGraphExecDestroy(exec_), 'cudaGraphExecDestroy')
            check(cudart.cudaGraphDestroy(graph), 'cudaGraphDestroy')
