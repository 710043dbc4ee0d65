"""Stand-ins for the calls that need a GPU: cuda-python's runtime and TensorRT's Runtime/engine/context.

No PyTorch here (the TensorRT path must run without it). "Device" and pinned memory are real host
memory owned by the fake, so copies are real ``memmove``s through the addresses the code passes; the
fake checks that every copy stays inside one allocation of the right kind (device vs pinned). The fake
execution context computes its outputs with ONNX Runtime on the exported graph, reading and writing
the tensors at the addresses it was given. A CUDA graph records the shape its context had when it was
captured, and replaying it after that context's input shape changed fails, as it would on a GPU.
"""
from __future__ import annotations

import enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort

from evit_ros import contract
from evit_ros.device.identity import GpuIdentity, board_model
from evit_ros.export.onnx_export import read_metadata

try:
    import tensorrt_rtx_bindings as rtx
except ImportError:  # TensorRT-RTX not installed: the engine file is written without a real build
    rtx = None

GPU_NAME, GPU_CC, GPU_SMS, GPU_MEM_MB = 'Fake Orin', (8, 7), 16, 61440
# the identity cuda_runtime.gpu_identity(0) reports under FakeCudart: what an engine for the fake GPU is keyed on
FAKE_GPU = GpuIdentity(GPU_NAME, f'{GPU_CC[0]}.{GPU_CC[1]}', GPU_SMS, GPU_MEM_MB, board_model())


def write_fake_engine(onnx_file: Path, ep: Path, version: str, gpu: GpuIdentity = FAKE_GPU, h: int = 64,
                      w: int = 128) -> None:
    """An engine file (placeholder bytes the fakes never parse) with the sidecar of an fp32 build of ``onnx_file``
    for TensorRT ``version`` and ``gpu``: a dynamic batch 1..2 of uint8 NHWC ``h`` x ``w``."""
    from evit_ros.export import engine_cache
    from evit_ros.fileio import file_sha256
    shapes = {'input': 'images', 'shape': [-1, h, w, 3],
              'profile': {'min': [1, h, w, 3], 'opt': [2, h, w, 3], 'max': [2, h, w, 3]}}
    fields = engine_cache.key_fields(file_sha256(onnx_file), version, gpu, 'fp32', shapes, [])
    doc = engine_cache.make_sidecar(fields, model_metadata=read_metadata(onnx_file), fp32_layers=[],
                                    rebuild_command=engine_cache.build_command(onnx_file, ep, 'fp32'))
    engine_cache.write_engine(ep, b'placeholder engine bytes', doc)


class FakeCudart:
    """cuda-python's runtime module as the code uses it; every call returns ``(error, *values)``."""

    class cudaError_t(enum.IntEnum):  # noqa: N801 (cuda-python names)
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorMemoryAllocation = 2
        cudaErrorNoDevice = 100
        cudaErrorIllegalState = 401
        cudaErrorStreamCaptureInvalidated = 901

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
        cudaStreamCaptureModeGlobal = 0
        cudaStreamCaptureModeThreadLocal = 1

    cudaHostAllocDefault = 0

    def __init__(self, devices: int = 1, name: str = GPU_NAME, cc: tuple[int, int] = GPU_CC, sms: int = GPU_SMS,
                 mem_mb: int = GPU_MEM_MB, fail: str = '') -> None:
        self.devices, self.name, self.cc, self.sms, self.mem_mb, self.fail = devices, name, cc, sms, mem_mb, fail
        self.blocks: dict[int, tuple[str, np.ndarray]] = {}     # ptr -> (kind, backing bytes)
        self.allocs: list[tuple[str, int]] = []                 # (kind, nbytes), in order
        self.freed: list[int] = []
        self.streams: dict[int, int] = {}                       # handle -> synchronize count
        self.capturing: dict[int, FakeCudaGraph] = {}
        self.copies = 0
        self.launches = 0
        self.graphs_destroyed = 0
        self.events: dict[int, int | None] = {}                 # handle -> copies done when recorded

    def _ok(self, *values: Any) -> tuple[Any, ...]:
        return (self.cudaError_t.cudaSuccess, *values)

    def _err(self, name: str) -> tuple[Any, ...]:
        return (self.cudaError_t[name], None)

    # device
    def cudaGetDeviceCount(self) -> tuple[Any, ...]:  # noqa: N802
        return self._ok(self.devices) if self.devices else (self.cudaError_t.cudaErrorNoDevice, 0)

    def cudaSetDevice(self, device: int) -> tuple[Any, ...]:  # noqa: N802
        return self._ok() if device < self.devices else (self.cudaError_t.cudaErrorInvalidValue,)

    def cudaGetDeviceProperties(self, device: int) -> tuple[Any, ...]:  # noqa: N802
        props = SimpleNamespace(name=self.name.encode() + b'\0' * 8, major=self.cc[0], minor=self.cc[1],
                                multiProcessorCount=self.sms, totalGlobalMem=self.mem_mb << 20)
        return self._ok(props)

    def cudaGetErrorString(self, err: Any) -> tuple[Any, ...]:  # noqa: N802
        return self._ok(f'fake CUDA error {int(err)}'.encode())

    # memory
    def _alloc(self, kind: str, nbytes: int) -> tuple[Any, ...]:
        if self.fail == f'alloc:{kind}' or nbytes > 1 << 40:
            return self._err('cudaErrorMemoryAllocation')
        buf = np.zeros(max(1, nbytes), np.uint8)
        self.blocks[buf.ctypes.data] = (kind, buf)
        self.allocs.append((kind, nbytes))
        return self._ok(buf.ctypes.data)

    def _free(self, kind: str, ptr: int) -> tuple[Any, ...]:
        if self.blocks.get(int(ptr), ('', None))[0] != kind:
            return (self.cudaError_t.cudaErrorInvalidValue,)
        del self.blocks[int(ptr)]
        self.freed.append(int(ptr))
        return self._ok()

    def cudaMalloc(self, size: int) -> tuple[Any, ...]:  # noqa: N802
        return self._alloc('device', size)

    def cudaFree(self, ptr: int) -> tuple[Any, ...]:  # noqa: N802
        return self._free('device', ptr)

    def cudaHostAlloc(self, size: int, flags: int) -> tuple[Any, ...]:  # noqa: N802
        return self._alloc('pinned', size)

    def cudaFreeHost(self, ptr: int) -> tuple[Any, ...]:  # noqa: N802
        return self._free('pinned', ptr)

    def block_of(self, ptr: int, nbytes: int, kind: str) -> np.ndarray:
        """The bytes [ptr, ptr+nbytes) inside one allocation of ``kind``; AssertionError otherwise."""
        for start, (k, buf) in self.blocks.items():
            if start <= ptr and ptr + nbytes <= start + buf.nbytes:
                assert k == kind, f'{ptr:#x} is {k} memory, expected {kind}'
                return buf[ptr - start:ptr - start + nbytes]
        raise AssertionError(f'{ptr:#x}+{nbytes} is not inside one {kind} allocation')

    # streams and copies
    def cudaStreamCreate(self) -> tuple[Any, ...]:  # noqa: N802
        handle = 0x5000 + len(self.streams)
        self.streams[handle] = 0
        return self._ok(handle)

    def cudaStreamSynchronize(self, stream: int) -> tuple[Any, ...]:  # noqa: N802
        self.streams[int(stream)] += 1
        return self._ok()

    def cudaStreamDestroy(self, stream: int) -> tuple[Any, ...]:  # noqa: N802
        del self.streams[int(stream)]
        return self._ok()

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: Any, stream: int) -> tuple[Any, ...]:  # noqa: N802
        to_device = kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice
        d = self.block_of(int(dst), count, 'device' if to_device else 'pinned')
        s = self.block_of(int(src), count, 'pinned' if to_device else 'device')

        def copy() -> None:
            d[...] = s
            self.copies += 1
        graph = self.capturing.get(int(stream))
        if graph is not None:
            graph.work.append((copy, None, None))
        else:
            copy()
        return self._ok()

    # events: a recorded event remembers how many copies had run (a stand-in for GPU time)
    def cudaEventCreate(self) -> tuple[Any, ...]:  # noqa: N802
        handle = 0x7000 + len(self.events)
        self.events[handle] = None
        return self._ok(handle)

    def cudaEventRecord(self, event: int, stream: int) -> tuple[Any, ...]:  # noqa: N802
        self.events[int(event)] = self.copies
        return self._ok()

    def cudaEventSynchronize(self, event: int) -> tuple[Any, ...]:  # noqa: N802
        return self._ok() if self.events.get(int(event)) is not None else (self.cudaError_t.cudaErrorInvalidValue,)

    def cudaEventElapsedTime(self, start: int, end: int) -> tuple[Any, ...]:  # noqa: N802
        a, b = self.events.get(int(start)), self.events.get(int(end))
        if a is None or b is None:
            return (self.cudaError_t.cudaErrorInvalidValue, 0.0)
        return self._ok(0.5 * (b - a))

    def cudaEventDestroy(self, event: int) -> tuple[Any, ...]:  # noqa: N802
        del self.events[int(event)]
        return self._ok()

    # CUDA graphs
    def cudaStreamBeginCapture(self, stream: int, mode: Any) -> tuple[Any, ...]:  # noqa: N802
        if self.fail == 'capture':
            return (self.cudaError_t.cudaErrorIllegalState,)
        self.capturing[int(stream)] = FakeCudaGraph()
        return self._ok()

    def cudaStreamEndCapture(self, stream: int) -> tuple[Any, ...]:  # noqa: N802
        return self._ok(self.capturing.pop(int(stream)))

    def cudaGraphInstantiate(self, graph: FakeCudaGraph, flags: int) -> tuple[Any, ...]:  # noqa: N802
        return self._ok(graph)

    def cudaGraphLaunch(self, graph: FakeCudaGraph, stream: int) -> tuple[Any, ...]:  # noqa: N802
        for _work, context, shape in graph.work:
            if context is not None and context.current_shape() != shape:
                graph.stale_launches += 1
                return (self.cudaError_t.cudaErrorIllegalState,)   # captured for another shape
        for work, _c, _s in graph.work:
            work()
        graph.launches += 1
        self.launches += 1
        return self._ok()

    def cudaGraphExecDestroy(self, graph: FakeCudaGraph) -> tuple[Any, ...]:  # noqa: N802
        return self._ok()

    def cudaGraphDestroy(self, graph: FakeCudaGraph) -> tuple[Any, ...]:  # noqa: N802
        self.graphs_destroyed += 1
        return self._ok()

    def live(self, kind: str) -> int:
        return sum(1 for k, _b in self.blocks.values() if k == kind)


class FakeCudaGraph:
    def __init__(self) -> None:
        self.work: list[tuple[Any, Any, Any]] = []    # (callable, context or None, context shape at capture)
        self.launches = 0
        self.stale_launches = 0


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    BF16 = 7
    INT64 = 8


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


_NP = {DataType.UINT8: np.uint8, DataType.FLOAT: np.float32, DataType.INT32: np.int32}


class ExecutionContextAllocationStrategy(enum.Enum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class FakeEngine:
    """``ICudaEngine``. The members each fake models are checked against every real TensorRT release CI has
    (tests/trt_bindings_checks.py): ``PROPERTIES`` besides the methods, ``SINCE`` the first major that
    has a member, ``FAKE_ONLY`` the test helpers."""

    PROPERTIES = ('num_io_tensors', 'device_memory_size_v2')
    SINCE = {'device_memory_size_v2': 10}
    FAKE_ONLY: tuple[str, ...] = ()
    device_memory_size_v2 = 1 << 16

    def __init__(self, trt: FakeTRT, tensors: list[tuple[str, TensorIOMode, tuple[int, ...], DataType]],
                 max_batch: int) -> None:
        self.trt, self.tensors, self.max_batch = trt, tensors, max_batch
        self.num_io_tensors = len(tensors)

    def _t(self, name: str) -> tuple[str, TensorIOMode, tuple[int, ...], DataType]:
        return next(t for t in self.tensors if t[0] == name)

    def get_tensor_name(self, i: int) -> str:
        return self.tensors[i][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._t(name)[1]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._t(name)[2]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._t(name)[3]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        shape = self._t(name)[2]
        return [(1, *shape[1:]), (self.max_batch, *shape[1:]), (self.max_batch, *shape[1:])]

    def create_execution_context(self, strategy: Any = None) -> FakeContext | None:
        if self.trt.fail == 'create_execution_context':
            return None
        # by name: the backend passes the strategy of the TensorRT module it was given (real or this fake's)
        ctx = FakeContext(self, user_managed=getattr(strategy, 'name', None) == 'USER_MANAGED')
        self.trt.contexts.append(ctx)
        return ctx


class FakeContext:
    """``IExecutionContext``: runs the exported ONNX with ONNX Runtime on the tensors found at the addresses
    it was given."""

    PROPERTIES: tuple[str, ...] = ()
    SINCE = {'set_device_memory': 10}
    FAKE_ONLY = ('current_shape',)

    def __init__(self, engine: FakeEngine, user_managed: bool = False) -> None:
        self.engine, self.trt = engine, engine.trt
        self.user_managed = user_managed
        self.device_memory: int | None = None
        self.addresses: dict[str, int] = {}
        self.input_shapes: list[tuple[int, ...]] = []
        self.executions = 0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        if self.trt.fail == 'set_input_shape' and self.input_shapes:
            return False
        self.input_shapes.append(tuple(shape))
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if self.trt.fail == f'set_tensor_address:{name}':
            return False
        self.addresses[name] = ptr
        return True

    def set_device_memory(self, ptr: int, size: int) -> None:
        assert self.user_managed and size >= self.engine.device_memory_size_v2
        self.trt.cudart.block_of(ptr, size, 'device')
        self.device_memory = ptr

    def current_shape(self) -> tuple[int, ...]:
        shape = self.engine.get_tensor_shape(contract.INPUT_NAME)
        return self.input_shapes[-1] if shape[0] < 0 else shape

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        shape = self.engine.get_tensor_shape(name)
        return (self.current_shape()[0], *shape[1:]) if shape[0] < 0 else shape

    def _view(self, name: str) -> np.ndarray:
        shape = self.get_tensor_shape(name)
        dtype = np.dtype(_NP[self.engine.get_tensor_dtype(name)])
        nbytes = int(np.prod(shape)) * dtype.itemsize
        return self.trt.cudart.block_of(self.addresses[name], nbytes, 'device').view(dtype).reshape(shape)

    def _run(self) -> None:
        outputs = [t[0] for t in self.engine.tensors if t[1] == TensorIOMode.OUTPUT]
        x = self._view(contract.INPUT_NAME)
        for name, arr in zip(outputs, self.trt.session.run(outputs, {contract.INPUT_NAME: x.copy()}), strict=True):
            self._view(name)[...] = arr
        self.executions += 1

    def execute_async_v3(self, stream_handle: int) -> bool:
        if self.trt.fail == 'execute_async_v3':
            return False
        if set(self.addresses) != {t[0] for t in self.engine.tensors}:
            return False   # TensorRT refuses to run with an unbound tensor
        if self.user_managed and self.device_memory is None:
            return False   # USER_MANAGED context without its activation memory
        graph = self.trt.cudart.capturing.get(int(stream_handle))
        if graph is not None and self.trt.fail == 'execute_during_capture':
            return False   # e.g. an op TensorRT cannot run inside a capture; cudaStreamEndCapture still succeeds
        if graph is not None:
            graph.work.append((self._run, self, self.current_shape()))
        else:
            self._run()
        return True


class FakeRuntime:
    PROPERTIES: tuple[str, ...] = ()
    SINCE: dict[str, int] = {}
    FAKE_ONLY: tuple[str, ...] = ()

    def __init__(self, trt: FakeTRT) -> None:
        self.trt = trt

    def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
        self.trt.deserialized.append(bytes(data))
        if self.trt.fail == 'deserialize':
            return None
        return FakeEngine(self.trt, self.trt.tensors, self.trt.max_batch)


class FakeTRT:
    """The TensorRT module as the backend sees it. Builder-side names come from TensorRT-RTX (CPU-capable)."""

    Logger = rtx.Logger if rtx is not None else type('Logger', (), {'WARNING': 2, '__init__': lambda s, lvl=2: None})
    DataType = DataType
    TensorIOMode = TensorIOMode
    ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy

    def __init__(self, cudart: FakeCudart, onnx_path: Path, version: str, *, static_batch: int | None = None,
                 fail: str = '', reorder: bool = True) -> None:
        self.__version__ = version
        self.cudart = cudart
        self.fail = fail
        self.deserialized: list[bytes] = []
        self.contexts: list[FakeContext] = []
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), so, providers=['CPUExecutionProvider'])
        tensors = []
        for mode, args in ((TensorIOMode.INPUT, self.session.get_inputs()),
                           (TensorIOMode.OUTPUT, self.session.get_outputs())):
            for a in args:
                shape = tuple(-1 if not isinstance(d, int) else d for d in a.shape)
                if static_batch is not None:
                    shape = (static_batch, *shape[1:])
                dt = {'tensor(uint8)': DataType.UINT8, 'tensor(float)': DataType.FLOAT,
                      'tensor(int32)': DataType.INT32}[a.type]
                tensors.append((a.name, mode, shape, dt))
        if reorder:   # engines need not list outputs in the contract's order
            tensors = [tensors[0]] + tensors[1:][::-1]
        self.tensors = tensors
        self.max_batch = static_batch or int(read_metadata(onnx_path)[contract.META_BATCH].split(':')[-1])

    @property
    def context(self) -> FakeContext | None:
        return self.contexts[0] if self.contexts else None

    def Runtime(self, logger: Any) -> FakeRuntime:  # noqa: N802 (TensorRT API name)
        return FakeRuntime(self)

    def __getattr__(self, name: str) -> Any:
        if rtx is None:
            raise AttributeError(name)
        return getattr(rtx, name)


def pinned_view(cudart: FakeCudart, arr: np.ndarray) -> bool:
    """True if ``arr`` lies in pinned memory the fake handed out."""
    try:
        cudart.block_of(arr.ctypes.data, arr.nbytes, 'pinned')
    except AssertionError:
        return False
    return True


__all__ = ['FakeCudart', 'FakeTRT', 'DataType', 'TensorIOMode', 'pinned_view', 'rtx']
