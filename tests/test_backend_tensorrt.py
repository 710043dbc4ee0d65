"""TensorRTBackend logic on a CPU machine.

Only GPU calls are faked (tests/trt_fakes.py): cuda-python's runtime (device properties, memory, streams,
copies, CUDA graphs; "device" memory is host memory the fake owns) and TensorRT's Runtime/engine/context
(they need CUDA to deserialize). The engine file and its sidecar are real (built by TensorRT-RTX on CPU
when it is installed), the cache check is the real one, and the fake execution context computes its
outputs with ONNX Runtime on the exported graph, reading and writing the buffers through the addresses
the backend set.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from trt_fakes import (
    FAKE_GPU,
    DataType,
    FakeCudart,
    FakeEngine,
    FakeTRT,
    pinned_view,
    rtx,
    write_fake_engine,
)

from evit_ros.backends.tensorrt_backend import TensorRTBackend, numpy_dtype, tensorrt_available
from evit_ros.device import cuda_runtime, identity
from evit_ros.errors import BackendError, BackendUnavailableError, EngineCacheMismatch
from evit_ros.export import engine_cache
from evit_ros.export.onnx_export import export_onnx
from evit_ros.inference import InferenceBackend

MODEL = 'efficientvit-seg-b0-cityscapes'
H, W = 64, 128
REPO = Path(__file__).resolve().parents[1]
TRT_VERSION = str(rtx.__version__) if rtx is not None else '10.3.0'


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
        build_engine(onnx_file, ep, precision='fp32', gpu=FAKE_GPU, trt_module=rtx)
    else:
        _write_fake_engine(onnx_file, ep)
    return ep


def _write_fake_engine(onnx_file: Path, ep: Path, version: str = TRT_VERSION) -> None:
    write_fake_engine(onnx_file, ep, version, FAKE_GPU, H, W)


@pytest.fixture()
def engine(built_engine: Path, tmp_path: Path) -> Path:
    """A private copy of the engine + sidecar (tests may rebuild or tamper with it)."""
    ep = tmp_path / built_engine.name
    ep.write_bytes(built_engine.read_bytes())
    engine_cache.sidecar_path(ep).write_text(engine_cache.sidecar_path(built_engine).read_text())
    return ep


@pytest.fixture()
def cudart(monkeypatch: pytest.MonkeyPatch) -> FakeCudart:
    """The fake GPU behind evit_ros.device.cuda_runtime (replaced per test)."""
    fake = FakeCudart()
    monkeypatch.setattr(cuda_runtime, 'cudart', fake)
    return fake


def _backend(engine: Path, onnx_file: Path, cudart: FakeCudart, **kw: Any) -> tuple[TensorRTBackend, FakeTRT]:
    trt = FakeTRT(cudart, onnx_file, kw.pop('version', TRT_VERSION),
                  **{k: kw.pop(k) for k in ('static_batch', 'fail') if k in kw})
    kw.setdefault('precision', 'fp32')
    kw.setdefault('build_if_stale', False)
    return TensorRTBackend(engine, trt_module=trt, **kw), trt


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, H, W, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# tests

def test_load_maps_engine_tensors_to_model_io(engine: Path, onnx_file: Path, cudart: FakeCudart) -> None:
    be, trt = _backend(engine, onnx_file, cudart, onnx_path=onnx_file)
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
    assert d['backend'] == 'tensorrt' and d['gpu'] == 'Fake Orin (sm 8.7, 16 SMs)' and d['tensorrt'] == TRT_VERSION
    assert d['fp32_check'].startswith('not inspected')     # fp32 build (or no GPU at build time): nothing pinned
    be.close()
    assert cudart.live('device') == cudart.live('pinned') == 0 and not cudart.streams   # everything released


def test_addresses_buffers_and_dynamic_batch(engine: Path, onnx_file: Path, cudart: FakeCudart) -> None:
    be, trt = _backend(engine, onnx_file, cudart)
    be.load()
    ctx = trt.context
    assert ctx is not None
    assert set(ctx.addresses) == {'images', 'labels', 'confidence'}
    per_frame = {'images': H * W * 3, 'labels': H * W, 'confidence': H * W}
    for name, ptr in ctx.addresses.items():     # every address is the start of a device buffer of the max batch
        cudart.block_of(ptr, 2 * per_frame[name], 'device')
    scratch = [('device', FakeEngine.device_memory_size_v2)]    # activation memory, shared by every context
    assert sorted(cudart.allocs) == sorted([('device', 2 * v) for v in per_frame.values()]
                                           + [('pinned', 2 * v) for v in per_frame.values()] + scratch)
    assert ctx.input_shapes == [(2, H, W, 3)]
    n_allocs = len(cudart.allocs)
    r = be.infer(_frames(1))
    assert r.labels is not None and pinned_view(cudart, r.labels)      # results are views of pinned memory
    be.infer(_frames(1, 1))
    be.infer(_frames(2))
    assert ctx.input_shapes == [(2, H, W, 3), (1, H, W, 3), (2, H, W, 3)]   # only when the batch changes
    assert len(cudart.allocs) == n_allocs    # no allocation per call
    be.close()


def test_outputs_match_onnxruntime_and_reuse_host_buffers(engine: Path, onnx_file: Path,
                                                          cudart: FakeCudart) -> None:
    be, trt = _backend(engine, onnx_file, cudart)
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
        assert len(cudart.streams) == 1 and next(iter(cudart.streams.values())) >= 2
        be.warmup(2)
        assert trt.context is not None and trt.context.executions == 2 + 2 * be.io.max_batch  # warms every batch size


def test_static_batch_engine_never_sets_input_shape(engine: Path, onnx_file: Path, cudart: FakeCudart) -> None:
    be, trt = _backend(engine, onnx_file, cudart, static_batch=1)
    with be:
        assert be.io.input.shape == (1, H, W, 3) and be.io.max_batch == 1
        be.infer(_frames(1))
        assert trt.context is not None and trt.context.input_shapes == []
        with pytest.raises(BackendError, match='takes 1'):
            be.infer(_frames(2))


def test_bad_batches_are_errors(engine: Path, onnx_file: Path, cudart: FakeCudart) -> None:
    be, _ = _backend(engine, onnx_file, cudart)
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
def test_false_or_none_from_tensorrt_raises(engine: Path, onnx_file: Path, cudart: FakeCudart, fail: str,
                                            needle: str) -> None:
    be, _ = _backend(engine, onnx_file, cudart, fail=fail)
    with pytest.raises(BackendError, match=needle):
        be.load()
        be.infer(_frames(2))
        be.infer(_frames(1))
    be.close()
    assert cudart.live('device') == cudart.live('pinned') == 0    # a failed load releases what it allocated


def test_cuda_errors_name_the_call(engine: Path, onnx_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCudart(fail='alloc:pinned')
    monkeypatch.setattr(cuda_runtime, 'cudart', fake)
    be, _ = _backend(engine, onnx_file, fake)
    with pytest.raises(BackendError, match=r'CUDA cudaHostAlloc\(\d+\) failed \(cudaErrorMemoryAllocation: fake'):
        be.load()
    assert fake.live('device') == fake.live('pinned') == 0 and not fake.streams
    monkeypatch.setattr(cuda_runtime, 'cudart', FakeCudart(devices=0))
    with pytest.raises(BackendUnavailableError, match='CUDA device 0 but this machine has 0'):
        _backend(engine, onnx_file, cuda_runtime.cudart)[0].load()
    monkeypatch.setattr(cuda_runtime, 'cudart', None)
    with pytest.raises(BackendUnavailableError, match='cuda-python is not installed.*JetPack 6'):
        _backend(engine, onnx_file, fake)[0].load()


@pytest.mark.skipif(rtx is None, reason='TensorRT-RTX is not installed')
def test_real_runtime_refuses_to_deserialize_without_gpu(engine: Path, cudart: FakeCudart) -> None:
    """The real TensorRT-RTX Runtime on this GPU-less machine returns None: reported with the rebuild command."""
    be = TensorRTBackend(engine, precision='fp32', build_if_stale=False, trt_module=rtx)
    with pytest.raises(BackendError, match='could not deserialize') as ei:
        be.load()
    assert engine_cache.read_sidecar(engine)['build_command'] in str(ei.value)
    be.close()


@pytest.mark.parametrize('change,needle', [
    ({'version': '10.3.0' if TRT_VERSION != '10.3.0' else '8.6.2'}, 'trt_version'),
    ({'gpu': dict(name='Jetson AGX Thor', cc=(11, 0))}, 'gpu_name'),
    ({'gpu': dict(sms=8)}, 'gpu_sm_count'),               # same name and sm 8.7: an Orin Nano is not an AGX Orin
    ({'gpu': dict(mem_mb=7620)}, 'gpu_memory_mb'),
    ({'precision': 'fp16'}, 'precision'),
])
def test_sidecar_mismatch_fails_with_rebuild_command(engine: Path, onnx_file: Path, change: dict[str, Any],
                                                     needle: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kw = dict(change)
    fake = FakeCudart(**kw.pop('gpu', {}))
    monkeypatch.setattr(cuda_runtime, 'cudart', fake)
    be, trt = _backend(engine, onnx_file, fake, onnx_path=onnx_file, **kw)
    with pytest.raises(EngineCacheMismatch, match=needle) as ei:
        be.load()
    assert f'Rebuild it with: evit-ros build-engine --onnx {onnx_file}' in str(ei.value)
    assert trt.deserialized == []     # nothing is deserialized from a stale engine


def test_board_model_is_part_of_the_identity(engine: Path, onnx_file: Path, cudart: FakeCudart, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    board = tmp_path / 'model'
    board.write_bytes(b'NVIDIA Jetson Orin Nano Engineering Reference Developer Kit\x00')
    monkeypatch.setattr(identity, 'DEVICE_TREE_MODEL', board)
    be, _ = _backend(engine, onnx_file, cudart)
    with pytest.raises(EngineCacheMismatch, match="board: engine built for '.*', this machine has 'NVIDIA Jetson "
                                                  "Orin Nano Engineering Reference Developer Kit'"):
        be.load()


def test_changed_onnx_without_permission_to_rebuild(engine: Path, onnx_file: Path, tmp_path: Path,
                                                    cudart: FakeCudart) -> None:
    other = tmp_path / 'other.onnx'
    other.write_bytes(onnx_file.read_bytes() + b'\0')
    be, _ = _backend(engine, onnx_file, cudart, onnx_path=other, build_if_stale=True, precision='int8')
    with pytest.raises(EngineCacheMismatch, match='ONNX changed.*INT8 and DLA engines are not rebuilt'):
        be.load()
    be, _ = _backend(engine, onnx_file, cudart, onnx_path=other, build_if_stale=False)
    with pytest.raises(EngineCacheMismatch, match='ONNX changed'):
        be.load()


def test_engine_replaced_between_check_and_read_is_refused(engine: Path, onnx_file: Path, cudart: FakeCudart,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    real_check = engine_cache.check_engine

    def check_then_concurrent_rebuild(*a: Any, **kw: Any) -> dict[str, Any]:
        doc = real_check(*a, **kw)
        engine.write_bytes(b'engine of another build')
        return doc
    monkeypatch.setattr(engine_cache, 'check_engine', check_then_concurrent_rebuild)
    be, trt = _backend(engine, onnx_file, cudart)
    with pytest.raises(EngineCacheMismatch, match='changed after its sidecar was checked'):
        be.load()
    assert trt.deserialized == []


@pytest.mark.skipif(rtx is None, reason='TensorRT-RTX is not installed (it builds engines on CPU)')
def test_stale_engine_is_rebuilt_through_the_builder(engine: Path, onnx_file: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    old = hashlib.sha256(engine.read_bytes()).hexdigest()
    fake = FakeCudart(name='Other GPU', cc=(8, 9), sms=46)
    monkeypatch.setattr(cuda_runtime, 'cudart', fake)
    be, trt = _backend(engine, onnx_file, fake, onnx_path=onnx_file, build_if_stale=True)
    with be:
        assert be.rebuilt and be.describe()['rebuilt'] == 'True'
        side = engine_cache.read_sidecar(engine)
        f = side['fields']
        assert (f['gpu_name'], f['compute_capability'], f['gpu_sm_count']) == ('Other GPU', '8.9', 46)
        assert side['engine_sha256'] != old and trt.deserialized == [engine.read_bytes()]
        assert f['shapes']['profile']['opt'][0] == 2     # the stale engine's opt batch is kept
        assert (engine.parent / 'timing.cache').is_file()
        r = be.infer(_frames(1))
        assert r.labels is not None
    assert not list(engine.parent.glob('.*.lock'))   # no lock files left behind


def test_cuda_graph_per_batch_size_on_its_own_context(engine: Path, onnx_file: Path, cudart: FakeCudart) -> None:
    be, trt = _backend(engine, onnx_file, cudart, cuda_graph=True)
    with be:
        x = _frames(2, 9)
        ref = trt.session.run(['labels'], {'images': x})[0]
        for _ in range(3):
            r = be.infer(x)
            assert r.labels is not None and np.array_equal(r.labels, ref)
        r1 = be.infer(x[:1])
        assert r1.labels is not None and np.array_equal(r1.labels[0], ref[0])
        r = be.infer(x)      # back to 2 after a shape switch: its graph still matches its context
        assert r.labels is not None and np.array_equal(r.labels, ref)
        graphs = be._graphs
        assert sorted(graphs) == [1, 2] and graphs[2]._graph.launches == 4 and graphs[1]._graph.launches == 1
        # one context for plain runs + one per captured batch size, each with a fixed shape
        assert len(trt.contexts) == 3 and [c.input_shapes[-1][0] for c in trt.contexts[1:]] == [2, 1]
        assert all(len(c.input_shapes) == 1 for c in trt.contexts[1:])
        # ... all sharing one activation buffer (they run one after another on one stream)
        assert len({c.device_memory for c in trt.contexts}) == 1 and trt.contexts[0].device_memory is not None
    assert cudart.graphs_destroyed == 2 and cudart.live('device') == 0


def test_fake_graph_replay_after_a_shape_switch_fails(engine: Path, onnx_file: Path, cudart: FakeCudart) -> None:
    """The fake is strict: a graph replayed after its context's input shape changed is an error."""
    be, trt = _backend(engine, onnx_file, cudart, cuda_graph=True)
    with be:
        be.infer(_frames(2))
        graph = be._graphs[2]
        ctx = trt.contexts[1]
        ctx.set_input_shape('images', (1, H, W, 3))       # what a single shared context would do
        with pytest.raises(BackendError, match='cudaGraphLaunch failed.*cudaErrorIllegalState'):
            be.infer(_frames(2))
        assert graph._graph.stale_launches == 1


def test_capture_failure_falls_back_to_plain_runs(engine: Path, onnx_file: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCudart(fail='capture')
    monkeypatch.setattr(cuda_runtime, 'cudart', fake)
    be, trt = _backend(engine, onnx_file, fake, cuda_graph=True)
    with be:
        r = be.infer(_frames(2))
        assert r.labels is not None and not be.cuda_graph and fake.launches == 0


def test_execute_refused_during_capture_ends_it_destroys_the_graph_and_runs_plain(
        engine: Path, onnx_file: Path, cudart: FakeCudart, caplog: pytest.LogCaptureFixture) -> None:
    """execute_async_v3 returning False inside a capture: the capture ends, its graph is destroyed, and infer()
    answers the plain way (it used to raise after end_capture and leak the graph; issue 21, item 2)."""
    be, trt = _backend(engine, onnx_file, cudart, cuda_graph=True, fail='execute_during_capture')
    with be:
        x = _frames(2, 4)
        ref = trt.session.run(['labels'], {'images': x})[0]
        with caplog.at_level('WARNING'):
            r = be.infer(x)
        assert r.labels is not None and np.array_equal(r.labels, ref)
        assert not be.cuda_graph and be._graphs == {} and 'running without graphs' in caplog.text
        assert cudart.capturing == {} and cudart.graphs_destroyed == 1 and cudart.launches == 0
        r = be.infer(x[:1])   # later batches: plain runs, no new capture
        assert r.labels is not None and np.array_equal(r.labels[0], ref[0]) and cudart.graphs_destroyed == 1


def test_close_twice_is_safe_and_reload_works(engine: Path, onnx_file: Path, cudart: FakeCudart) -> None:
    be, _ = _backend(engine, onnx_file, cudart)
    be.load()
    be.close()
    be.close()
    with pytest.raises(BackendError, match='before load'):
        be.infer(_frames(1))
    be.load()
    assert be.infer(_frames(1)).labels is not None
    be.close()


def test_opt_batch_comes_from_the_engine_sidecar(engine: Path, onnx_file: Path, cudart: FakeCudart,
                                                 tmp_path: Path) -> None:
    backend, _ = _backend(engine, onnx_file, cudart)
    opt = engine_cache.read_sidecar(engine)['fields']['shapes']['profile']['opt'][0]
    assert backend.opt_batch == opt and opt >= 1        # what the node's batching policy stays at or below
    bare = tmp_path / 'nosidecar.engine'
    bare.write_bytes(engine.read_bytes())
    assert _backend(bare, onnx_file, cudart)[0].opt_batch is None


def test_numpy_dtype_mapping() -> None:
    assert [numpy_dtype(d) for d in (DataType.UINT8, DataType.FLOAT, DataType.INT32, DataType.HALF)] == [
        'uint8', 'float32', 'int32', 'float16']
    with pytest.raises(BackendError, match='BF16'):
        numpy_dtype(DataType.BF16)
    if rtx is not None:   # the real enum of a TensorRT build
        assert numpy_dtype(rtx.DataType.UINT8) == 'uint8' and numpy_dtype(rtx.DataType.FLOAT) == 'float32'


def test_tensorrt_available_reports_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_runtime, 'cudart', FakeCudart())
    ok, why = tensorrt_available(trt_module=rtx or FakeTRT)
    assert ok and 'Fake Orin' in why
    monkeypatch.setattr(cuda_runtime, 'cudart', FakeCudart(devices=0))
    ok, why = tensorrt_available(trt_module=rtx or FakeTRT)
    assert not ok and 'no CUDA device' in why
    monkeypatch.setattr(cuda_runtime, 'cudart', None)
    ok, why = tensorrt_available(trt_module=rtx or FakeTRT)
    assert not ok and 'cuda-python is not installed' in why
    for name in ('tensorrt', 'tensorrt_bindings', 'tensorrt_rtx_bindings'):
        monkeypatch.setitem(sys.modules, name, None)   # makes `import name` raise ImportError
    ok, why = tensorrt_available()
    assert not ok and 'not importable' in why


def test_real_cuda_python_on_this_gpu_less_machine() -> None:
    """The installed cuda-python (not a fake) imports here and reports no device instead of raising."""
    if cuda_runtime.cudart is None:
        pytest.skip('cuda-python is not installed')
    count, why = cuda_runtime.device_count()
    assert count == 0 and why
    ok, reason = tensorrt_available()
    assert not ok


_NO_TORCH = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == 'torch' or name.startswith('torch.'):
            raise ImportError('torch is blocked: a vehicle without the Jetson PyTorch wheel')
sys.meta_path.insert(0, _Block())
"""


def test_tensorrt_path_never_imports_torch(engine: Path, onnx_file: Path, tmp_path: Path) -> None:
    """rosdep installs no PyTorch: load + infer + calibration copies run with torch unimportable."""
    script = tmp_path / 'no_torch.py'
    script.write_text(_NO_TORCH + f"""
from pathlib import Path
import numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
from trt_fakes import FakeCudart, FakeTRT
from evit_ros.device import cuda_runtime
from evit_ros.backends.tensorrt_backend import TensorRTBackend
from evit_ros.export import calibration, tensorrt_build, engine_cache
fake = FakeCudart()
cuda_runtime.cudart = fake
trt = FakeTRT(fake, Path({str(onnx_file)!r}), {TRT_VERSION!r})
with TensorRTBackend({str(engine)!r}, trt_module=trt, precision='fp32', build_if_stale=False, cuda_graph=True) as be:
    r = be.infer(np.zeros((2, {H}, {W}, 3), np.uint8))
    assert r.labels.shape == (2, {H}, {W})
to_device = calibration.cuda_to_device()
ptr = to_device(np.arange(12, dtype=np.float32))
assert fake.block_of(ptr, 48, 'device').view(np.float32)[5] == 5.0
assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))
print('ok without torch')
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, 'PYTHONPATH': str(REPO)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'ok without torch' in out.stdout


@pytest.mark.parametrize('layout,expected', [
    ('old', 'cuda.cudart'),      # cuda-python < 12.6: only `from cuda import cudart`
    ('none', 'None'),            # not installed: the backend reports the install line instead of crashing
])
def test_both_cuda_python_import_paths(tmp_path: Path, layout: str, expected: str) -> None:
    pkg = tmp_path / 'cuda'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('')          # shadows the installed (namespace) package
    if layout == 'old':
        (pkg / 'cudart.py').write_text('class cudaError_t:\n    cudaSuccess = 0\n'
                                       'def cudaGetDeviceCount():\n    return (0, 3)\n')
    code = ('from evit_ros.device import cuda_runtime as c\n'
            'print(c.cudart.__name__ if c.cudart is not None else None, c.device_count())\n'
            'from evit_ros.errors import BackendUnavailableError\n'
            'try:\n    c.runtime()\nexcept BackendUnavailableError as e:\n    print("unavailable:", e)\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, 'PYTHONPATH': f'{tmp_path}:{REPO}'})
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith(expected)
    if layout == 'old':
        assert first.endswith("(3, '')")
    else:
        assert 'unavailable: cuda-python is not installed' in out.stdout and 'cuda-python==' not in first


def test_a_stale_engine_in_a_full_folder_fails_before_the_rebuild(engine: Path, onnx_file: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebuild takes minutes on a Jetson: a folder it cannot write into fails first, with the path and fix."""
    import shutil
    from collections import namedtuple

    from evit_ros import fileio
    from evit_ros.errors import CacheError
    from evit_ros.export import tensorrt_build
    fake = FakeCudart(name='Other GPU', cc=(8, 9), sms=46)   # the engine was built for another GPU: stale
    monkeypatch.setattr(cuda_runtime, 'cudart', fake)
    usage = namedtuple('usage', 'total used free')
    monkeypatch.setattr(fileio.shutil, 'disk_usage',
                        lambda p: usage(1 << 30, 1 << 30, 0) if Path(p) == engine.parent else shutil.disk_usage(p))
    monkeypatch.setattr(tensorrt_build, 'build_engine', lambda *a, **k: pytest.fail('built into a full folder'))
    be, _ = _backend(engine, onnx_file, fake, onnx_path=onnx_file, build_if_stale=True)
    with pytest.raises(CacheError) as info:
        be.load()
    text = str(info.value)
    assert f'cannot write the rebuilt engine into {engine.parent}: no space left on device (ENOSPC, 0.0 MB free' in text
    assert 'Set backend.engine_path to a file in a writable folder' in text and 'evit-ros build-engine' in text


def test_needs_build_says_when_load_would_build(engine: Path, onnx_file: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The node asks this before loading, to run a build of minutes in a child process a signal ends."""
    fake = FakeCudart()
    monkeypatch.setattr(cuda_runtime, 'cudart', fake)
    current, _ = _backend(engine, onnx_file, fake, onnx_path=onnx_file, build_if_stale=True)
    assert current.needs_build() is False                       # sidecar matches this GPU and TensorRT
    monkeypatch.setattr(cuda_runtime, 'cudart', FakeCudart(name='Other GPU', cc=(8, 9), sms=46))
    stale, _ = _backend(engine, onnx_file, fake, onnx_path=onnx_file, build_if_stale=True)
    assert stale.needs_build() is True                          # another GPU: load would rebuild
    int8, _ = _backend(engine, onnx_file, fake, onnx_path=onnx_file, build_if_stale=True, precision='int8')
    assert int8.needs_build() is False                          # refused by load, never rebuilt automatically
    missing, _ = _backend(tmp_path / 'none.engine', onnx_file, fake, onnx_path=onnx_file, build_if_stale=True)
    assert missing.needs_build() is True
    no_onnx, _ = _backend(tmp_path / 'none.engine', onnx_file, fake, build_if_stale=True)
    assert no_onnx.needs_build() is False                       # nothing to build from: load reports it


def test_configure_builds_a_stale_engine_in_the_child_process(engine: Path, onnx_file: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A stale engine's rebuild (minutes) is the node's child-process work, like a missing one (issue 23 item 3)."""
    from evit_ros.config import load_config
    from evit_ros.contract import NODE_HEAD
    from evit_ros.ros.prepare import pending_work
    cfg = load_config(None, overrides={'backend.type': 'tensorrt', 'backend.engine_path': str(engine),
                                       'backend.onnx_path': str(onnx_file), 'backend.precision': 'fp32',
                                       'input.height': H, 'input.width': W})
    monkeypatch.setattr(cuda_runtime, 'cudart', FakeCudart())
    monkeypatch.setattr('evit_ros.export.tensorrt_build.import_tensorrt',
                        lambda *a, **k: FakeTRT(FakeCudart(), onnx_file, TRT_VERSION))
    assert pending_work(cfg, NODE_HEAD) is None                 # current: loaded in the node, no child
    monkeypatch.setattr(cuda_runtime, 'cudart', FakeCudart(name='Other GPU', cc=(8, 9), sms=46))
    work = pending_work(cfg, NODE_HEAD)
    assert work is not None and work.kind == 'engine' and work.target == engine
