"""The TensorRT code against the real bindings of ONE TensorRT release, down to where a GPU is needed.

Not collected by the main test run: tests/test_trt_bindings.py runs this file once per release, each in
its own interpreter with that release's ``tensorrt_bindings`` on the path and a stub libnvinfer
(tests/trt_bindings_support.py). Enums, flags, ``Dims``, ``Logger``, the calibrator and progress-monitor
base classes are the release's own; the objects a Builder or Runtime would create (network, config,
profiles, timing cache, engine, inspector, context) are :class:`Spec`/:class:`Checked` objects of the real
classes, so every member the code reads and every call it makes is checked against the release.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tensorrt_bindings as trt
from trt_bindings_support import Checked, Spec, TrtView, check_call, check_override, real_member, signatures

from evit_ros import contract
from evit_ros.device.identity import GpuIdentity
from evit_ros.errors import BackendError, EngineBuildError, EngineError
from evit_ros.export import engine_cache
from evit_ros.export.tensorrt_build import parse_onnx
from evit_ros.export.tensorrt_precision import plan_precision

VERSION = os.environ['EVIT_TRT_REAL_VERSION']
MAJOR = int(VERSION.split('.')[0])
ONNX_DIR = Path(os.environ['EVIT_TRT_ONNX_DIR'])
GPU = GpuIdentity('Fake Orin', '8.7', 16, 61440, 'none')
FP32_LAYER = 'Row major linear FP32'


def test_this_is_the_real_release_and_a_builder_needs_a_gpu() -> None:
    assert trt.__version__ == VERSION and Path(trt.__file__).parent.parent.name == f'tensorrt-{VERSION}'
    with pytest.raises(TypeError, match='nullptr'):   # the stub libnvinfer has no builder: the GPU boundary
        trt.Builder(trt.Logger(trt.Logger.WARNING))


def test_the_code_finds_the_bindings_and_says_why_they_are_unusable_here() -> None:
    """Only the bindings wheel installed (no ``tensorrt`` front end): found, and unusable without a GPU."""
    from evit_ros.backends.tensorrt_backend import tensorrt_available
    from evit_ros.export.tensorrt_build import import_tensorrt
    assert import_tensorrt() is trt
    usable, why = tensorrt_available()
    assert not usable and why.startswith(f'tensorrt_bindings {VERSION} imports but ')


# ---------------------------------------------------------------------------------------------------------
# precision plan and network creation flags (issue 21 item 4)

def _network_flags(base: Any, strongly_typed: bool) -> int:
    """The flags ``parse_onnx`` creates the network with on the module ``base``."""
    chain = Chain(base=base)
    parse_onnx(chain.view, chain.builder(trt.Logger()), ONNX_DIR / 'dyn.onnx', strongly_typed)
    (flags,) = chain.network_flags
    return flags


def test_precision_plan_and_network_flags_of_this_release() -> None:
    creation = trt.NetworkDefinitionCreationFlag
    plans = {(p, mixed, qdq): plan_precision(trt, p, mixed=mixed, qdq=qdq)
             for p, mixed, qdq in [('fp32', False, False), ('fp16', False, False), ('fp16', True, False),
                                   ('int8', False, True)]}
    for plan in plans.values():                   # every builder flag a plan sets exists in this release
        assert all(hasattr(trt.BuilderFlag, f) for f in plan.flags), plan
    if MAJOR == 8:
        assert not any(p.strongly_typed for p in plans.values())
        assert plans['fp16', False, False].flags == ('FP16', 'OBEY_PRECISION_CONSTRAINTS')
        assert plans['int8', False, True].flags == ('FP16', 'INT8', 'OBEY_PRECISION_CONSTRAINTS')
        assert plan_precision(trt, 'int8', mixed=False, qdq=False).implicit_int8
        assert _network_flags(trt, False) == 1 << int(creation.EXPLICIT_BATCH)
        with pytest.raises(EngineError, match='cannot build strongly typed'):
            _network_flags(trt, True)
        return
    # TensorRT >= 10: every build is strongly typed, fp32 included (weak typing is deprecated since 10.12)
    assert all(p.strongly_typed and p.flags == () for p in plans.values())
    assert plans['fp16', False, False].rewrite_mixed and not plans['fp16', True, False].rewrite_mixed
    with pytest.raises(EngineError, match='implicit INT8 calibration'):
        plan_precision(trt, 'int8', mixed=False, qdq=False)
    if MAJOR == 10:
        assert _network_flags(trt, True) == 1 << int(creation.STRONGLY_TYPED) == 2
    else:
        # 11.x: STRONGLY_TYPED is "retained for API compatibility but ignored" (value 0): no flag is set
        assert int(creation.STRONGLY_TYPED) == 0 and _network_flags(trt, True) == 0


class _Without:
    """The real module with members of one enum hidden: a later release that removed them."""

    def __init__(self, enum: str, *hidden: str) -> None:
        self.enum, self.hidden = enum, hidden

    def __getattr__(self, name: str) -> Any:
        real = getattr(trt, name)
        if name != self.enum:
            return real
        return type(name, (), {k: v for k, v in real.__members__.items() if k not in self.hidden})


@pytest.mark.skipif(MAJOR < 11, reason='TensorRT >= 11 only (no weakly typed path)')
def test_strong_typing_does_not_depend_on_the_ignored_flag() -> None:
    """If a release after 11.x drops the ignored STRONGLY_TYPED member, fp16 still builds strongly typed."""
    later = _Without('NetworkDefinitionCreationFlag', 'STRONGLY_TYPED')
    assert not hasattr(later.NetworkDefinitionCreationFlag, 'STRONGLY_TYPED')
    for precision in ('fp16', 'fp32'):
        plan = plan_precision(later, precision, mixed=False, qdq=False)
        assert plan.strongly_typed and plan.flags == ()
    assert _network_flags(later, True) == 0


def test_numpy_dtypes_of_the_release_data_types() -> None:
    from evit_ros.backends.tensorrt_backend import TRT_TO_NUMPY, numpy_dtype
    members = trt.DataType.__members__
    for name, np_name in TRT_TO_NUMPY.items():
        if name in members:
            assert numpy_dtype(members[name]) == np_name
    assert {'FLOAT', 'HALF', 'INT8', 'INT32', 'BOOL', 'UINT8'} <= set(members)
    for name in set(members) - set(TRT_TO_NUMPY):           # BF16, FP8, INT4, ...: refused with a reason
        with pytest.raises(BackendError, match='no numpy equivalent'):
            numpy_dtype(members[name])


# ---------------------------------------------------------------------------------------------------------
# build_engine: the builder chain through the real classes

class Chain:
    """Builder -> network/parser/config/profiles/timing cache; Runtime -> engine/inspector/context."""

    def __init__(self, fp32_outputs: bool = True, base: Any = trt, dla_cores: int = 0) -> None:
        self.fp32_outputs, self.dla_cores = fp32_outputs, dla_cores
        self.builders: list[Spec] = []
        self.profiles: list[Spec] = []
        self.config: Spec | None = None
        self.network: Spec | None = None
        self.network_flags: list[int] = []
        self.pinned: list[str] = []
        self.engines: list[Spec] = []
        self.view = TrtView(base, Builder=self.builder, OnnxParser=self.parser, Runtime=self.runtime)

    # -- builder side
    def builder(self, logger: Any) -> Spec:
        b = Spec(trt, trt.Builder, {'create_network': self.create_network,
                                    'create_builder_config': self.create_config,
                                    'create_optimization_profile': self.create_profile,
                                    'build_serialized_network': lambda net, cfg: b'serialized plan'},
                 num_DLA_cores=self.dla_cores, logger=logger)
        self.builders.append(b)
        return b

    def create_network(self, flags: int) -> Spec:
        self.network_flags.append(flags)
        self.network = Spec(trt, trt.INetworkDefinition, {'get_input': lambda i: self.input,
                                                          'get_layer': lambda i: self.layers[i]},
                            num_inputs=1, num_layers=0)
        return self.network

    def parser(self, network: Any, logger: Any) -> Spec:
        def parse_graph(model: onnx.ModelProto) -> bool:
            inp = model.graph.input[0]
            dims = [d.dim_value if d.HasField('dim_value') else -1 for d in inp.type.tensor_type.shape.dim]
            self.input = Spec(trt, trt.ITensor, name=inp.name, shape=trt.Dims(dims), dtype=trt.DataType.UINT8)
            self.layers = [self.layer(n.name, len(n.output)) for n in model.graph.node]
            network.values['num_layers'] = len(self.layers)
            return True
        return Spec(trt, trt.OnnxParser, {
            'parse': lambda data, path=None: parse_graph(onnx.load_from_string(bytes(data))),
            'parse_from_file': lambda path: parse_graph(onnx.load(path))}, num_errors=0)

    def layer(self, name: str, n_out: int) -> Spec:
        outs = [Spec(trt, trt.ITensor, dtype=trt.float32) for _ in range(n_out)]
        return Spec(trt, trt.ILayer, {'get_output': lambda j: outs[j]}, name=name, num_outputs=n_out,
                    precision=trt.float32)

    def create_config(self) -> Spec:
        cache = Spec(trt, trt.ITimingCache, {'serialize': lambda: b'timing cache v2'})
        self.config = Spec(trt, trt.IBuilderConfig, {'add_optimization_profile': lambda p: 0,
                                                     'set_calibration_profile': lambda p: True,
                                                     'create_timing_cache': lambda data: cache,
                                                     'set_timing_cache': lambda c, ignore: True,
                                                     'get_timing_cache': lambda: cache},
                             progress_monitor=None, int8_calibrator=None)
        return self.config

    def create_profile(self) -> Spec:
        profile = Spec(trt, trt.IOptimizationProfile)
        self.profiles.append(profile)
        return profile

    # -- runtime side: the engine inspector reports what the pinned layers ran in
    def runtime(self, logger: Any) -> Spec:
        return Spec(trt, trt.Runtime, {'deserialize_cuda_engine': self.engine})

    def engine(self, data: Any) -> Spec:
        layers = [{'Name': name, 'LayerType': 'MatrixMultiply',
                   'Outputs': [{'Name': f'{name}_out', 'Format/Datatype': FP32_LAYER if self.fp32_outputs
                                else 'Row major linear FP16 format'}]} for name in self.pinned]
        info = json.dumps({'Layers': layers, 'Bindings': ['images', 'labels']})
        inspector = Spec(trt, trt.EngineInspector, {'get_engine_information': lambda fmt: info})
        context = Spec(trt, trt.IExecutionContext, {'set_input_shape': lambda name, shape: True})
        engine = Spec(trt, trt.ICudaEngine, {'create_engine_inspector': lambda: inspector,
                                             'create_execution_context': lambda *a: context})
        self.engines.append(engine)
        return engine


def _build(chain: Chain, onnx_name: str, tmp_path: Path, precision: str, **kw: Any) -> Any:
    from evit_ros.export import tensorrt_build
    from evit_ros.export.fp32_scopes import fp32_scope_nodes, integer_tensors, scopes_from_metadata
    from evit_ros.export.onnx_export import load_onnx, metadata_of
    model = load_onnx(ONNX_DIR / onnx_name)
    chain.pinned = fp32_scope_nodes(model.graph, scopes_from_metadata(metadata_of(model)), integer_tensors(model))
    return tensorrt_build.build_engine(ONNX_DIR / onnx_name, tmp_path / f'{precision}.engine', precision=precision,
                                       trt_module=chain.view, gpu=GPU, timing_cache=tmp_path / 'timing.cache',
                                       workspace_mb=256, **kw)


@pytest.mark.parametrize('precision', ['fp32', 'fp16'])
def test_build_engine_through_the_real_classes(precision: str, tmp_path: Path) -> None:
    chain = Chain()
    res = _build(chain, 'dyn.onnx', tmp_path, precision, opt_batch=1)
    assert res.trt_version == VERSION and res.engine_path.read_bytes() == b'serialized plan'
    config, network = chain.config, chain.network
    assert config is not None and network is not None
    strong = MAJOR >= 10
    assert res.strongly_typed == strong
    creation = trt.NetworkDefinitionCreationFlag
    if MAJOR == 8:
        assert chain.network_flags == [1 << int(creation.EXPLICIT_BATCH)]
    else:   # 10.x opts in with STRONGLY_TYPED; 11 types every network strongly and ignores the flag
        assert chain.network_flags == [1 << int(creation.STRONGLY_TYPED) if MAJOR == 10 else 0]
    set_flags = [f.name for (f,) in config.called('set_flag')]
    assert set_flags == ([] if strong or precision == 'fp32' else ['FP16', 'OBEY_PRECISION_CONSTRAINTS'])
    assert config.called('set_memory_pool_limit') == [(trt.MemoryPoolType.WORKSPACE, 256 << 20)]
    assert config.called('profiling_verbosity=') == [(trt.ProfilingVerbosity.DETAILED,)]
    # the optimization profile: min 1, opt = the camera count, max = the exported max batch
    (profile,) = chain.profiles
    ((name, lo, mid, hi),) = profile.called('set_shape')
    assert name == 'images' and [tuple(d) for d in (lo, mid, hi)] == [(1, 64, 128, 3), (1, 64, 128, 3),
                                                                      (2, 64, 128, 3)]
    assert config.called('add_optimization_profile') == [(profile,)] and not config.called('set_calibration_profile')
    # timing cache: created empty, attached, serialized back to the file
    assert config.called('create_timing_cache') == [(b'',)] and len(config.called('set_timing_cache')) == 1
    assert (tmp_path / 'timing.cache').read_bytes() == b'timing cache v2'
    # the progress monitor is a real IProgressMonitor subclass where the release has one (10+)
    monitors = config.called('progress_monitor=')
    assert len(monitors) == (1 if hasattr(trt, 'IProgressMonitor') else 0)
    assert all(isinstance(m, trt.IProgressMonitor) for (m,) in monitors)
    # pinned layers (weakly typed fp16 only) and the engine inspector's JSON judged after the build
    pinned = [la for la in chain.layers if la.called('precision=')]
    if precision == 'fp16' and not strong:
        assert pinned and all(la.called('precision=') == [(trt.float32,)] for la in pinned)
        assert all(la.called('set_output_type') == [(0, trt.float32)] for la in pinned)
    else:
        assert not pinned
    if precision == 'fp32':
        assert res.inspection == {'inspected': False, 'reason': 'no pinned layers'}
    else:
        assert res.inspection['inspected'] and res.inspection['violations'] == []
        assert res.inspection['checked_fp32'] == len(chain.pinned) > 0
        (engine,) = chain.engines
        assert engine.called('create_execution_context') == [()]
    side = engine_cache.read_sidecar(res.engine_path)
    assert side['strongly_typed'] == strong and side['fields']['trt_version'] == VERSION


def test_a_pinned_layer_built_in_fp16_fails_the_build(tmp_path: Path) -> None:
    chain = Chain(fp32_outputs=False)
    with pytest.raises(EngineBuildError, match='FP32-pinned attention layers in lower precision'):
        _build(chain, 'dyn.onnx', tmp_path, 'fp16', opt_batch=1)
    assert not (tmp_path / 'fp16.engine').exists()


def test_a_dla_build_sets_the_device_and_gpu_fallback(tmp_path: Path) -> None:
    chain = Chain(dla_cores=2)
    res = _build(chain, 'dyn.onnx', tmp_path, 'fp16', opt_batch=1, dla_core=1)
    config = chain.config
    assert config is not None
    assert config.called('default_device_type=') == [(trt.DeviceType.DLA,)] and config.called('DLA_core=') == [(1,)]
    assert 'GPU_FALLBACK' in [f.name for (f,) in config.called('set_flag')] and 'DLA1' in res.builder_flags
    with pytest.raises(EngineError, match='dla_core=2 but this device has 2 DLA cores'):
        _build(Chain(dla_cores=2), 'dyn.onnx', tmp_path, 'fp16', opt_batch=1, dla_core=2)


@pytest.mark.skipif(MAJOR < 10, reason='TensorRT >= 10 only')
def test_a_mixed_precision_export_builds_strongly_typed_without_rewriting(tmp_path: Path) -> None:
    chain = Chain()
    res = _build(chain, 'mixed.onnx', tmp_path, 'fp16', opt_batch=2)
    assert res.strongly_typed and chain.network_flags == [0 if MAJOR >= 11 else 2]
    (builder,) = chain.builders
    assert chain.config is not None and not chain.config.called('set_flag')
    assert builder.called('create_network') == [(chain.network_flags[0],)]


# ---------------------------------------------------------------------------------------------------------
# implicit INT8 (TensorRT 8.6): the calibrator subclass and the calibration profile (issue 21 item 3)

def _calibrator(batch: int, cache: Path | None = None) -> Any:
    from evit_ros.export.calibration import make_entropy_calibrator
    frames = [np.full((batch, 64, 128, 3), i, np.uint8) for i in range(3)]
    return make_entropy_calibrator(frames, batch, cache, trt_module=trt,
                                   to_device=lambda b: 0x1000 + int(b[0, 0, 0, 0]))


@pytest.mark.skipif(not hasattr(trt, 'IInt8EntropyCalibrator2'), reason='no implicit INT8 in this release')
def test_calibrator_is_a_real_entropy_calibrator_called_through_tensorrt(tmp_path: Path) -> None:
    base = trt.IInt8EntropyCalibrator2
    calib = _calibrator(2, tmp_path / 'calib.cache')
    assert isinstance(calib, trt.IInt8Calibrator)
    for name in ('get_batch_size', 'get_batch', 'read_calibration_cache', 'write_calibration_cache'):
        check_override(base, name, getattr(type(calib), name))
    # get_batch_size goes through the bindings' C++ trampoline to the Python override (the other base
    # methods are the bindings' defaults when called from Python: they are checked by signature above)
    assert base.get_batch_size(calib) == 2
    assert calib.get_batch(['images']) == [0x1000] and calib.read_calibration_cache() is None
    calib.write_calibration_cache(memoryview(b'scales'))
    assert (tmp_path / 'calib.cache').read_bytes() == b'scales' == calib.read_calibration_cache()
    assert [calib.get_batch(['images']) for _ in range(3)] == [[0x1001], [0x1002], None]   # then exhausted
    assert base.get_algorithm(calib) == trt.CalibrationAlgoType.ENTROPY_CALIBRATION_2


@pytest.mark.skipif(MAJOR != 8, reason='implicit INT8 is the TensorRT 8.6 path')
def test_implicit_int8_calibrates_at_the_calibrator_batch(tmp_path: Path) -> None:
    """The build profile's opt is the camera count (1); the calibrator serves batches of the max (2)."""
    chain = Chain()
    made: list[Any] = []

    def factory(shape: tuple[int, ...], fmt: str) -> Any:
        made.append(_calibrator(shape[0]))
        return made[-1]
    res = _build(chain, 'dyn.onnx', tmp_path, 'int8', opt_batch=1, calib_factory=factory)
    config = chain.config
    assert config is not None and [f.name for (f,) in config.called('set_flag')] == ['FP16', 'INT8',
                                                                                     'OBEY_PRECISION_CONSTRAINTS']
    (calib,) = made
    assert config.called('int8_calibrator=') == [(calib,)] and calib.get_batch_size() == 2
    (calib_profile,) = config.called('set_calibration_profile')
    ((name, lo, mid, hi),) = calib_profile[0].called('set_shape')
    # TensorRT calibrates at the calibration profile's opt shape: it must be the calibrator's batch
    assert tuple(mid) == (calib.get_batch_size(), 64, 128, 3)
    assert tuple(lo) == tuple(hi) == tuple(mid)
    assert res.shapes['calibration'] == [2, 64, 128, 3] and res.shapes['profile']['opt'] == [1, 64, 128, 3]


# ---------------------------------------------------------------------------------------------------------
# the progress monitor subclass

@pytest.mark.skipif(not hasattr(trt, 'IProgressMonitor'), reason='IProgressMonitor arrived in TensorRT 10')
def test_progress_monitor_is_called_through_tensorrt() -> None:
    from evit_ros.export.tensorrt_build import _Heartbeat, _progress_monitor
    hb = _Heartbeat('test', period=3600)
    mon = _progress_monitor(trt, hb)
    base = trt.IProgressMonitor
    assert isinstance(mon, base)
    for name in ('phase_start', 'step_complete', 'phase_finish'):
        check_override(base, name, getattr(type(mon), name))
    base.phase_start(mon, 'Building engine', None, 3)
    assert hb.phase == 'Building engine'
    assert base.step_complete(mon, 'Building engine', 1) is True
    base.phase_finish(mon, 'Building engine')


# ---------------------------------------------------------------------------------------------------------
# the runtime: tests/trt_fakes.py against the real classes, and the backend's calls through them

FAKES = {'FakeEngine': 'ICudaEngine', 'FakeContext': 'IExecutionContext', 'FakeRuntime': 'Runtime'}


@pytest.mark.parametrize('fake_name', sorted(FAKES))
def test_each_fake_models_the_real_class(fake_name: str) -> None:
    import inspect

    import trt_fakes
    fake, real = getattr(trt_fakes, fake_name), getattr(trt, FAKES[fake_name])
    methods = [n for n, v in vars(fake).items() if callable(v) and not n.startswith('_') and n not in fake.FAKE_ONLY
               and not n.isupper()]
    assert methods
    for name in [*methods, *fake.PROPERTIES]:
        member = real_member(real, name)
        if fake.SINCE.get(name, 0) > MAJOR:
            assert member is None, f'{name} exists in {VERSION}: lower {fake_name}.SINCE'
            continue
        assert member is not None, f'{fake_name}.{name}: TensorRT {VERSION} {real.__name__} has no {name}'
        if name in fake.PROPERTIES:
            assert isinstance(member, property), f'{real.__name__}.{name} is not a property in {VERSION}'
            continue
        sig = inspect.signature(getattr(fake, name))
        for params in signatures(member, name):    # the fake accepts every call the real class accepts
            sig.bind(None, *[object() for p in params if not p[2]])
            sig.bind(None, *[object() for _ in params])


def test_backend_runtime_calls_through_the_real_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TensorRT backend (load, dynamic batches, CUDA graphs, close) with every engine/context/runtime
    call checked against this release; the fakes compute, ONNX Runtime behind them."""
    from trt_fakes import FakeContext, FakeCudart, FakeEngine, FakeRuntime, FakeTRT, write_fake_engine

    from evit_ros.backends.tensorrt_backend import TensorRTBackend
    from evit_ros.device import cuda_runtime

    def wrap(value: Any) -> Any:
        for fake, real in ((FakeEngine, trt.ICudaEngine), (FakeContext, trt.IExecutionContext)):
            if isinstance(value, fake):
                return Checked(trt, real, value, wrap)
        return value

    class RealFacedTRT(FakeTRT):
        def Runtime(self, logger: Any) -> Any:  # noqa: N802 (TensorRT API name)
            check_call(trt, trt.Runtime, '__init__', (logger,), {})
            return Checked(trt, trt.Runtime, FakeRuntime(self), wrap)

    cudart = FakeCudart()
    monkeypatch.setattr(cuda_runtime, 'cudart', cudart)
    onnx_file = ONNX_DIR / 'lc.onnx'
    fake = RealFacedTRT(cudart, onnx_file, VERSION)
    fake.Logger = trt.Logger                           # the real logger and allocation strategy
    fake.ExecutionContextAllocationStrategy = getattr(trt, 'ExecutionContextAllocationStrategy', None)
    ep = tmp_path / 'lc.engine'
    write_fake_engine(onnx_file, ep, VERSION, cuda_runtime.gpu_identity(0))
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 128, 3), np.uint8)
    for graphs in (False, True):
        be = TensorRTBackend(ep, precision='fp32', build_if_stale=False, cuda_graph=graphs, trt_module=fake)
        be.load()
        for n in (2, 1, 2):
            res = be.infer(frames[:n])
            assert res.labels is not None and res.labels.shape == (n, 64, 128)
        be.close()
    assert cudart.live('device') == cudart.live('pinned') == 0
    user_managed = [c.user_managed for c in fake.contexts]
    assert user_managed and all(user_managed) == (MAJOR >= 10)   # shared activation memory where TensorRT allows
    assert cudart.launches > 0                                   # the CUDA graphs were replayed


def test_inputs_of_the_onnx_files() -> None:
    """The graphs the build tests parse: a dynamic batch of 2 with attention scopes recorded."""
    from evit_ros.export.onnx_export import read_metadata
    meta = read_metadata(ONNX_DIR / 'dyn.onnx')
    assert contract.dynamic_max_batch(meta) == 2 and meta.get('evit.fp32_scopes')
