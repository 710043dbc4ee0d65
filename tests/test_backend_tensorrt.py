"""TensorRTBackend logic on a CPU machine.

Only GPU calls are faked: ``torch.cuda`` (device name/capability, streams, CUDA graphs; "device" tensors
are CPU tensors) and TensorRT's Runtime/engine/context (they need CUDA to deserialize). The engine file
and its sidecar are real (built by TensorRT-RTX on CPU when it is installed), the cache check is the real
one, and the fake execution context computes its outputs with ONNX Runtime on the exported graph, reading
and writing the buffers through the addresses the backend set.
"""
from __future__ import annotations

import contextlib
import enum
import hashlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from evit_ros import contract
from evit_ros.backends.base import InferenceBackend
from evit_ros.backends.tensorrt_backend import TensorRTBackend, numpy_dtype, tensorrt_available
from evit_ros.errors import BackendError, BackendUnavailableError, EngineCacheMismatch
from evit_ros.export import engine_cache
from evit_ros.export.onnx_export import export_onnx, read_metadata
from evit_ros.fileio import file_sha256

try:
    import tensorrt_rtx_bindings as rtx
except ImportError:  # TensorRT-RTX not installed: the engine file is written without a real build
    rtx = None

MODEL = 'efficientvit-seg-b0-cityscapes'
H, W = 64, 128
GPU_NAME, GPU_CC = 'Fake Orin', (8, 7)
TRT_VERSION = str(rtx.__version__) if rtx is not None else '10.3.0'


# ---------------------------------------------------------------------------------------------
# fakes for the GPU-only calls

class FakeCuda:
    """torch.cuda stand-in: one fake GPU, streams that record synchronizes, capturable 'graphs'."""

    def __init__(self, available: bool = True, name: str = GPU_NAME, cc: tuple[int, int] = GPU_CC) -> None:
        self.available, self.name, self.cc = available, name, cc
        self.capturing: FakeGraph | None = None
        self.streams: list[FakeStream] = []

    def is_available(self) -> bool:
        return self.available

    def set_device(self, device: int) -> None:
        pass

    def get_device_name(self, device: int = 0) -> str:
        return self.name

    def get_device_capability(self, device: int = 0) -> tuple[int, int]:
        return self.cc

    def Stream(self, device: int = 0) -> FakeStream:  # noqa: N802 (torch API name)
        s = FakeStream(0x5000 + len(self.streams))
        self.streams.append(s)
        return s

    @contextlib.contextmanager
    def stream(self, s: FakeStream) -> Iterator[None]:
        yield

    CUDAGraph: Any = None  # set in __init__ of FakeTorch (needs the instance)

    @contextlib.contextmanager
    def graph(self, g: FakeGraph, stream: Any = None) -> Iterator[None]:
        self.capturing = g
        try:
            yield
        finally:
            self.capturing = None


class FakeStream:
    def __init__(self, handle: int) -> None:
        self.cuda_stream = handle
        self.syncs = 0

    def synchronize(self) -> None:
        self.syncs += 1


class FakeGraph:
    def __init__(self) -> None:
        self.work: list[Callable[[], None]] = []
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        for w in self.work:
            w()


class FakeTorch:
    """Real torch, except that 'cuda' and pinned allocations are CPU tensors registered by address."""

    def __init__(self, cuda: FakeCuda | None = None) -> None:
        self.cuda = cuda or FakeCuda()
        self.cuda.CUDAGraph = FakeGraph
        self.memory: dict[int, torch.Tensor] = {}
        self.allocs: list[tuple[str, tuple[int, ...], bool]] = []   # (device, shape, pinned)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def empty(self, shape: tuple[int, ...], *, dtype: torch.dtype, device: str = 'cpu',
              pin_memory: bool = False) -> torch.Tensor:
        t = torch.empty(shape, dtype=dtype)
        self.memory[t.data_ptr()] = t
        self.allocs.append((device, tuple(shape), pin_memory))
        return t


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


_NP_TO_TRT = {np.dtype('uint8'): DataType.UINT8, np.dtype('float32'): DataType.FLOAT,
              np.dtype('int32'): DataType.INT32}


class FakeEngine:
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

    def create_execution_context(self) -> FakeContext | None:
        if self.trt.fail == 'create_execution_context':
            return None
        self.trt.context = FakeContext(self)
        return self.trt.context


class FakeContext:
    """Runs the exported ONNX with ONNX Runtime on the tensors found at the addresses it was given."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.trt = engine, engine.trt
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

    def _batch(self) -> int:
        shape = self.engine.get_tensor_shape(contract.INPUT_NAME)
        return self.input_shapes[-1][0] if shape[0] < 0 else shape[0]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        shape = self.engine.get_tensor_shape(name)
        return (self._batch(), *shape[1:]) if shape[0] < 0 else shape

    def _run(self) -> None:
        mem = self.trt.torch.memory
        n = self._batch()
        x = mem[self.addresses[contract.INPUT_NAME]][:n].numpy()
        outputs = [t[0] for t in self.engine.tensors if t[1] == TensorIOMode.OUTPUT]
        for name, arr in zip(outputs, self.trt.session.run(outputs, {contract.INPUT_NAME: x}), strict=True):
            mem[self.addresses[name]][:n].copy_(torch.from_numpy(arr))
        self.executions += 1

    def execute_async_v3(self, stream_handle: int) -> bool:
        if self.trt.fail == 'execute_async_v3':
            return False
        if set(self.addresses) != {t[0] for t in self.engine.tensors}:
            return False   # TensorRT refuses to run with an unbound tensor
        graph = self.trt.torch.cuda.capturing
        if graph is not None:
            graph.work.append(self._run)
        else:
            self._run()
        return True


class FakeRuntime:
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

    def __init__(self, torch_fake: FakeTorch, onnx_path: Path, version: str = TRT_VERSION, *,
                 static_batch: int | None = None, fail: str = '', reorder: bool = True) -> None:
        self.__version__ = version
        self.torch = torch_fake
        self.fail = fail
        self.deserialized: list[bytes] = []
        self.context: FakeContext | None = None
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

    def Runtime(self, logger: Any) -> FakeRuntime:  # noqa: N802 (TensorRT API name)
        return FakeRuntime(self)

    def __getattr__(self, name: str) -> Any:
        if rtx is None:
            raise AttributeError(name)
        return getattr(rtx, name)


# ---------------------------------------------------------------------------------------------
# fixtures: one exported graph, one engine + sidecar

@pytest.fixture(scope='module')
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from evit_ros.model import create_model
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model(MODEL, pretrained=False).eval()
    d = tmp_path_factory.mktemp('trt_backend')
    return export_onnx(MODEL, d / 'lc.onnx', height=H, width=W, model=model, head='labels+confidence',
                       max_batch=2).path


@pytest.fixture(scope='module')
def built_engine(onnx_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real TensorRT-RTX engine (CPU build) for the fake GPU; without RTX, placeholder bytes + a real sidecar."""
    d = tmp_path_factory.mktemp('engines')
    ep = d / 'lc.engine'
    if rtx is not None:
        from evit_ros.export.tensorrt_build import build_engine
        build_engine(onnx_file, ep, precision='fp32', gpu=(GPU_NAME, '8.7'), trt_module=rtx)
    else:
        _write_fake_engine(onnx_file, ep)
    return ep


def _write_fake_engine(onnx_file: Path, ep: Path, version: str = TRT_VERSION, gpu: str = GPU_NAME) -> None:
    shapes = {'input': 'images', 'shape': [-1, H, W, 3],
              'profile': {'min': [1, H, W, 3], 'opt': [2, H, W, 3], 'max': [2, H, W, 3]}}
    fields = engine_cache.key_fields(file_sha256(onnx_file), version, gpu, '8.7', 'fp32', shapes, [])
    doc = engine_cache.make_sidecar(fields, model_metadata=read_metadata(onnx_file), fp32_layers=[],
                                    rebuild_command=engine_cache.build_command(onnx_file, ep, 'fp32'))
    engine_cache.write_engine(ep, b'placeholder engine bytes', doc)


@pytest.fixture()
def engine(built_engine: Path, tmp_path: Path) -> Path:
    """A private copy of the engine + sidecar (tests may rebuild or tamper with it)."""
    ep = tmp_path / built_engine.name
    ep.write_bytes(built_engine.read_bytes())
    engine_cache.sidecar_path(ep).write_text(engine_cache.sidecar_path(built_engine).read_text())
    return ep


def _backend(engine: Path, onnx_file: Path, **kw: Any) -> tuple[TensorRTBackend, FakeTRT, FakeTorch]:
    ft = kw.pop('torch_fake', None) or FakeTorch()
    trt = FakeTRT(ft, onnx_file, **{k: kw.pop(k) for k in ('version', 'static_batch', 'fail') if k in kw})
    kw.setdefault('precision', 'fp32')
    kw.setdefault('build_if_stale', False)
    return TensorRTBackend(engine, trt_module=trt, torch_module=ft, **kw), trt, ft


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, H, W, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# tests

def test_load_maps_engine_tensors_to_model_io(engine: Path, onnx_file: Path) -> None:
    be, trt, _ = _backend(engine, onnx_file, onnx_path=onnx_file)
    assert isinstance(be, InferenceBackend) and be.name == 'tensorrt'
    with pytest.raises(BackendError, match='before load'):
        _ = be.io
    be.load()
    assert trt.deserialized == [engine.read_bytes()]   # the engine file itself, unmodified
    io = be.io
    assert io.model_name == MODEL and io.head == 'labels+confidence' and io.input_format == 'uint8-nhwc'
    assert (io.input.name, io.input.shape, io.input.dtype) == ('images', (-1, H, W, 3), 'uint8')
    # outputs in the contract's order although the engine lists confidence first
    assert [(o.name, o.shape, o.dtype) for o in io.outputs] == [('labels', (-1, H, W), 'uint8'),
                                                                ('confidence', (-1, H, W), 'uint8')]
    assert io.max_batch == 2 and io.input_hw == (H, W)
    assert io.num_classes == 19 and io.class_names[0] == 'road' and len(io.class_colors[0]) == 3
    d = be.describe()
    assert d['backend'] == 'tensorrt' and d['gpu'] == 'Fake Orin (sm 8.7)' and d['tensorrt'] == TRT_VERSION
    be.close()


def test_addresses_buffers_and_dynamic_batch(engine: Path, onnx_file: Path) -> None:
    be, trt, ft = _backend(engine, onnx_file)
    be.load()
    ctx = trt.context
    assert ctx is not None
    assert set(ctx.addresses) == {'images', 'labels', 'confidence'}
    for name, ptr in ctx.addresses.items():     # every address points at a device buffer of the max batch
        assert ft.memory[ptr].shape[0] == 2, name
    devices = [a for a in ft.allocs if a[0].startswith('cuda')]
    pinned = [a for a in ft.allocs if a[2]]
    assert len(devices) == len(pinned) == 3 and all(not a[2] for a in devices)
    assert ctx.input_shapes == [(2, H, W, 3)]
    n_allocs = len(ft.allocs)
    be.infer(_frames(1))
    be.infer(_frames(1, 1))
    be.infer(_frames(2))
    assert ctx.input_shapes == [(2, H, W, 3), (1, H, W, 3), (2, H, W, 3)]   # only when the batch changes
    assert len(ft.allocs) == n_allocs    # no allocation per call
    be.close()


def test_outputs_match_onnxruntime_and_reuse_host_buffers(engine: Path, onnx_file: Path) -> None:
    be, trt, ft = _backend(engine, onnx_file)
    with be:
        x = _frames(2, 5)
        r = be.infer(x)
        ref_labels, ref_conf = trt.session.run(['labels', 'confidence'], {'images': x})
        assert r.labels is not None and r.confidence is not None and r.logits is None
        assert r.labels.dtype == np.uint8 and r.labels.shape == (2, H, W)
        assert np.array_equal(r.labels, ref_labels) and np.array_equal(r.confidence, ref_conf)
        assert r.timings_ms['infer'] > 0
        first = r.labels
        r2 = be.infer(x[1:])
        assert r2.labels is not None and r2.labels.shape == (1, H, W)
        assert np.shares_memory(first, r2.labels)            # same pinned host buffer, documented reuse
        assert np.array_equal(r2.labels[0], ref_labels[1])
        assert ft.cuda.streams[0].syncs >= 2 and len(ft.cuda.streams) == 1
        be.warmup(2)
        assert trt.context is not None and trt.context.executions == 2 + 2 * be.io.max_batch  # warms every batch size


def test_static_batch_engine_never_sets_input_shape(engine: Path, onnx_file: Path) -> None:
    be, trt, _ = _backend(engine, onnx_file, static_batch=1)
    with be:
        assert be.io.input.shape == (1, H, W, 3) and be.io.max_batch == 1
        be.infer(_frames(1))
        assert trt.context is not None and trt.context.input_shapes == []
        with pytest.raises(BackendError, match='takes 1'):
            be.infer(_frames(2))


def test_bad_batches_are_errors(engine: Path, onnx_file: Path) -> None:
    be, _, _ = _backend(engine, onnx_file)
    with pytest.raises(BackendError, match='before load'):
        be.infer(_frames(1))
    with be:
        with pytest.raises(BackendError, match='dtype float32'):
            be.infer(_frames(1).astype(np.float32))
        with pytest.raises(BackendError, match='shape'):
            be.infer(np.zeros((1, H, W + 32, 3), np.uint8))
        with pytest.raises(BackendError, match='1..2'):
            be.infer(_frames(3))


@pytest.mark.parametrize('fail,needle', [
    ('execute_async_v3', 'execute_async_v3'),
    ('set_input_shape', 'set_input_shape'),
    ('set_tensor_address:confidence', "set_tensor_address\\('confidence'\\)"),
    ('create_execution_context', 'create_execution_context'),
    ('deserialize', 'could not deserialize.*Rebuild it with: evit-ros build-engine'),
])
def test_false_or_none_from_tensorrt_raises(engine: Path, onnx_file: Path, fail: str, needle: str) -> None:
    be, _, _ = _backend(engine, onnx_file, fail=fail)
    with pytest.raises(BackendError, match=needle):
        be.load()
        be.infer(_frames(2))
        be.infer(_frames(1))
    be.close()


@pytest.mark.skipif(rtx is None, reason='TensorRT-RTX is not installed')
def test_real_runtime_refuses_to_deserialize_without_gpu(engine: Path) -> None:
    """The real TensorRT-RTX Runtime on this GPU-less machine returns None: reported with the rebuild command."""
    be = TensorRTBackend(engine, precision='fp32', build_if_stale=False, trt_module=rtx, torch_module=FakeTorch())
    with pytest.raises(BackendError, match='could not deserialize') as ei:
        be.load()
    assert engine_cache.read_sidecar(engine)['build_command'] in str(ei.value)
    be.close()


@pytest.mark.parametrize('change,needle', [
    ({'version': '10.3.0' if TRT_VERSION != '10.3.0' else '8.6.2'}, 'trt_version'),
    ({'torch_fake': 'other-gpu'}, 'gpu_name'),
    ({'precision': 'fp16'}, 'precision'),
])
def test_sidecar_mismatch_fails_with_rebuild_command(engine: Path, onnx_file: Path, change: dict[str, Any],
                                                     needle: str) -> None:
    kw = dict(change)
    if kw.get('torch_fake') == 'other-gpu':
        kw['torch_fake'] = FakeTorch(FakeCuda(name='Jetson AGX Thor', cc=(11, 0)))
    be, trt, _ = _backend(engine, onnx_file, onnx_path=onnx_file, **kw)
    with pytest.raises(EngineCacheMismatch, match=needle) as ei:
        be.load()
    assert f'Rebuild it with: evit-ros build-engine --onnx {onnx_file}' in str(ei.value)
    assert trt.deserialized == []     # nothing is deserialized from a stale engine


def test_changed_onnx_without_permission_to_rebuild(engine: Path, onnx_file: Path, tmp_path: Path) -> None:
    other = tmp_path / 'other.onnx'
    other.write_bytes(onnx_file.read_bytes() + b'\0')
    be, _, _ = _backend(engine, onnx_file, onnx_path=other, build_if_stale=True, precision='int8')
    with pytest.raises(EngineCacheMismatch, match='ONNX changed.*INT8 and DLA engines are not rebuilt'):
        be.load()
    be, _, _ = _backend(engine, onnx_file, onnx_path=other, build_if_stale=False)
    with pytest.raises(EngineCacheMismatch, match='ONNX changed'):
        be.load()
    with pytest.raises(BackendUnavailableError, match='CUDA GPU'):
        _backend(engine, onnx_file, torch_fake=FakeTorch(FakeCuda(available=False)))[0].load()


def test_engine_replaced_between_check_and_read_is_refused(engine: Path, onnx_file: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    real_check = engine_cache.check_engine

    def check_then_concurrent_rebuild(*a: Any, **kw: Any) -> dict[str, Any]:
        doc = real_check(*a, **kw)
        engine.write_bytes(b'engine of another build')
        return doc
    monkeypatch.setattr(engine_cache, 'check_engine', check_then_concurrent_rebuild)
    be, trt, _ = _backend(engine, onnx_file)
    with pytest.raises(EngineCacheMismatch, match='changed after its sidecar was checked'):
        be.load()
    assert trt.deserialized == []


@pytest.mark.skipif(rtx is None, reason='TensorRT-RTX is not installed (it builds engines on CPU)')
def test_stale_engine_is_rebuilt_through_the_builder(engine: Path, onnx_file: Path) -> None:
    old = hashlib.sha256(engine.read_bytes()).hexdigest()
    ft = FakeTorch(FakeCuda(name='Other GPU', cc=(8, 9)))
    be, trt, _ = _backend(engine, onnx_file, onnx_path=onnx_file, build_if_stale=True, torch_fake=ft)
    with be:
        assert be.rebuilt and be.describe()['rebuilt'] == 'True'
        side = engine_cache.read_sidecar(engine)
        assert side['fields']['gpu_name'] == 'Other GPU' and side['fields']['compute_capability'] == '8.9'
        assert side['engine_sha256'] != old and trt.deserialized == [engine.read_bytes()]
        assert (engine.parent / 'timing.cache').is_file()
        r = be.infer(_frames(1))
        assert r.labels is not None


def test_cuda_graph_captured_once_per_batch_then_replayed(engine: Path, onnx_file: Path) -> None:
    be, trt, ft = _backend(engine, onnx_file, cuda_graph=True)
    with be:
        x = _frames(2, 9)
        ref = trt.session.run(['labels'], {'images': x})[0]
        for _ in range(3):
            r = be.infer(x)
            assert r.labels is not None and np.array_equal(r.labels, ref)
        r1 = be.infer(x[:1])
        assert r1.labels is not None and np.array_equal(r1.labels[0], ref[0])
        graphs = be._graphs
        assert sorted(graphs) == [1, 2] and graphs[2].replays == 3 and graphs[1].replays == 1


def test_close_twice_is_safe_and_reload_works(engine: Path, onnx_file: Path) -> None:
    be, _, _ = _backend(engine, onnx_file)
    be.load()
    be.close()
    be.close()
    with pytest.raises(BackendError, match='before load'):
        be.infer(_frames(1))
    be.load()
    assert be.infer(_frames(1)).labels is not None
    be.close()


def test_numpy_dtype_mapping() -> None:
    assert [numpy_dtype(d) for d in (DataType.UINT8, DataType.FLOAT, DataType.INT32, DataType.HALF)] == [
        'uint8', 'float32', 'int32', 'float16']
    with pytest.raises(BackendError, match='BF16'):
        numpy_dtype(DataType.BF16)
    if rtx is not None:   # the real enum of a TensorRT build
        assert numpy_dtype(rtx.DataType.UINT8) == 'uint8' and numpy_dtype(rtx.DataType.FLOAT) == 'float32'


def test_tensorrt_available_reports_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    ok, why = tensorrt_available(trt_module=rtx or FakeTRT, torch_module=FakeTorch())
    assert ok and 'Fake Orin' in why
    ok, why = tensorrt_available(trt_module=rtx or FakeTRT, torch_module=FakeTorch(FakeCuda(available=False)))
    assert not ok and 'no CUDA GPU' in why
    for name in ('tensorrt', 'tensorrt_rtx_bindings'):
        monkeypatch.setitem(sys.modules, name, None)   # makes `import name` raise ImportError
    ok, why = tensorrt_available()
    assert not ok and 'not importable' in why
