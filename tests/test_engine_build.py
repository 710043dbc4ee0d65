"""TensorRT engines from our ONNX graphs, built for real with TensorRT-RTX on CPU (no GPU needed).

TensorRT-RTX is strongly typed (no FP16 builder flag), so fp32 graphs build as fp32 and fp16 needs the
mixed-precision export; the weakly typed TensorRT 8.6/10 path is covered by mypy against the stubs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from evit_ros import contract
from evit_ros.device.identity import GpuIdentity
from evit_ros.errors import EngineBuildError, EngineError
from evit_ros.export import engine_cache
from evit_ros.export.onnx_export import export_onnx
from evit_ros.fileio import file_sha256

trt: Any = pytest.importorskip('tensorrt_rtx_bindings', reason='TensorRT-RTX bindings (tensorrt-rtx-cu12-bindings) '
                               'are not installed; engine builds cannot be tested here')

from evit_ros.export.tensorrt_build import build_engine, import_tensorrt, parse_onnx  # noqa: E402

MODEL = 'efficientvit-seg-b0-cityscapes'
H, W = 64, 128
GPU = ('cpu-test', 'none')


@pytest.fixture(scope='module')
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from evit_ros.model import create_model
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model(MODEL, pretrained=False).eval()
    d = tmp_path_factory.mktemp('engine_onnx')
    files = {head: export_onnx(MODEL, d / f'{head.replace("+", "-")}.onnx', height=H, width=W, model=model,
                               head=head).path for head in contract.HEADS}
    files['mixed'] = export_onnx(MODEL, d / 'mixed.onnx', height=H, width=W, model=model, head='labels',
                                 mixed_precision_fp16=True, max_batch=2).path
    files['float-nchw'] = export_onnx(MODEL, d / 'fnchw.onnx', height=H, width=W, model=model, head='labels-lowres',
                                      input_format='float-nchw').path
    return files


@pytest.fixture(scope='module')
def qdq_files(onnx_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small Q/DQ INT8 graphs made with ONNX Runtime's quantizer on CPU: TensorRT's form and ORT's defaults."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from evit_ros.export.fp32_scopes import fp32_scope_nodes, scopes_from_metadata
    from evit_ros.export.onnx_export import read_metadata

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.rng, self.left = np.random.default_rng(0), 3

        def get_next(self) -> dict[str, np.ndarray] | None:
            self.left -= 1
            return None if self.left < 0 else {'images': self.rng.integers(0, 256, (1, H, W, 3), np.uint8)}

    src = onnx_files['labels']
    graph = onnx.load(str(src)).graph
    keep = fp32_scope_nodes(graph, scopes_from_metadata(read_metadata(src)))
    keep += [n.name for n in graph.node if not n.name.startswith('/model/')]   # pre/post-processing stays float
    d = tmp_path_factory.mktemp('qdq')
    good, defaults = d / 'q.onnx', d / 'q_ort_defaults.onnx'
    quantize_static(str(src), str(good), Frames(), quant_format=QuantFormat.QDQ, op_types_to_quantize=['Conv'],
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    nodes_to_exclude=keep, extra_options={'ActivationSymmetric': True, 'WeightSymmetric': True,
                                                          'QuantizeBias': False})
    quantize_static(str(src), str(defaults), Frames(), quant_format=QuantFormat.QDQ, op_types_to_quantize=['Conv'],
                    nodes_to_exclude=keep)
    return {'good': good, 'ort-defaults': defaults}


def test_import_prefers_a_real_runtime() -> None:
    mod = import_tensorrt()
    assert hasattr(mod, 'Builder')  # the stub-only `tensorrt` directory must not be taken for a runtime


@pytest.mark.parametrize('head', contract.HEADS)
def test_rtx_parses_and_builds_every_head(onnx_files: dict[str, Path], tmp_path: Path, head: str) -> None:
    res = build_engine(onnx_files[head], tmp_path / 'e.engine', precision='fp32', gpu=GPU,
                       timing_cache=tmp_path / 'timing.cache')
    assert res.engine_path.stat().st_size == res.engine_bytes > 10_000
    assert res.num_layers > 300 and res.strongly_typed
    side = engine_cache.check_engine(res.engine_path, onnx_files[head], trt_version=trt.__version__,
                                     gpu=GpuIdentity.from_tuple(GPU), precision='fp32')
    assert side['model_metadata'][contract.META_HEAD] == head
    assert side['fields']['shapes']['shape'] == [1, H, W, 3]
    assert side['fp32_layers'] == list(res.fp32_layers) and res.fp32_layers
    assert (tmp_path / 'timing.cache').is_file()
    # the pinned set, selected from the ONNX name scopes, holds a layer for every attention MatMul and Div
    graph = onnx.load(str(onnx_files[head])).graph
    attention = {n.name for n in graph.node if n.op_type == 'MatMul'
                 or (n.op_type == 'Div' and n.name.startswith('/model/'))}
    assert attention and attention <= set(res.fp32_layers)


def test_float_nchw_graph_builds(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    res = build_engine(onnx_files['float-nchw'], tmp_path / 'f.engine', precision='fp32', gpu=GPU)
    assert res.shapes['shape'] == [1, 3, H, W] and res.shapes['dtype'].endswith('FLOAT')
    assert res.engine_path.stat().st_size == res.engine_bytes


def _network(path: Path) -> Any:
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    network, parser = parse_onnx(trt, builder, path, strongly_typed=True)
    return builder, network, parser


def test_mixed_precision_fp16_build_covers_attention_layers(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    res = build_engine(onnx_files['mixed'], precision='fp16', gpu=GPU, engines_dir=tmp_path)
    assert res.engine_path == tmp_path / f'{MODEL}_{H}x{W}_labels_b1-2_fp16.engine'
    assert res.shapes['profile'] == {'min': [1, H, W, 3], 'opt': [2, H, W, 3], 'max': [2, H, W, 3]}
    _b, network, _p = _network(onnx_files['mixed'])
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    matmuls = {la.name for la in layers if la.type == trt.LayerType.MATRIX_MULTIPLY}
    # float divisions in the network (the dynamic batch adds integer shape arithmetic, also named Div)
    divs = {la.name for la in layers if la.type == trt.LayerType.ELEMENTWISE and la.name.endswith('/Div')
            and la.name.startswith('/model/') and la.get_output(0).dtype in (trt.DataType.FLOAT, trt.DataType.HALF)}
    assert matmuls and divs
    pinned = set(res.fp32_layers)
    assert matmuls <= pinned and divs <= pinned
    # the pinned layers really compute in fp32 in this strongly typed network
    by_name = {la.name: la for la in layers}
    for name in matmuls | divs:
        assert by_name[name].get_output(0).dtype == trt.DataType.FLOAT
    convs = [la for la in layers if la.type == trt.LayerType.CONVOLUTION]
    net_convs = [la for la in convs if la.name.startswith('/model/')]
    head_convs = [la for la in convs if not la.name.startswith('/model/')]   # in-graph upsampling stays fp32
    assert net_convs and all(la.get_output(0).dtype == trt.DataType.HALF for la in net_convs)
    assert all(la.get_output(0).dtype == trt.DataType.FLOAT for la in head_convs)


class _LayerPrecisionStandIn:
    """TensorRT 8.6/10 layer precision API (TensorRT-RTX has none): records what pin_fp32 sets."""

    def __init__(self, layer: Any) -> None:
        self.name, self.num_outputs = layer.name, layer.num_outputs
        self._outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        self.precision: Any = None
        self.output_types: dict[int, Any] = {}

    def get_output(self, j: int) -> Any:
        return self._outputs[j]

    def set_output_type(self, j: int, dtype: Any) -> None:
        self.output_types[j] = dtype


def test_weakly_typed_selection_and_pinning(onnx_files: dict[str, Path]) -> None:
    """TensorRT 8.6's FP16-flag path: the whole attention scope (ONNX) -> network layers (real parse) -> FP32."""
    from evit_ros.export.fp32_scopes import fp32_nodes, fp32_scope_nodes, integer_tensors, scopes_from_metadata
    from evit_ros.export.onnx_export import read_metadata
    from evit_ros.export.tensorrt_build import pin_fp32, select_fp32_layers
    path = onnx_files['mixed']          # dynamic batch: the scope also holds integer shape arithmetic
    model = onnx.load(str(path))
    scopes = scopes_from_metadata(read_metadata(path))
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    network, _parser = parse_onnx(trt, builder, path, strongly_typed=False)
    nodes = fp32_scope_nodes(model.graph, scopes, integer_tensors(model))
    assert set(fp32_nodes(model.graph, scopes, integer_tensors(model))) < set(nodes)   # more than the math ops
    ops = {n.name: n.op_type for n in model.graph.node}
    assert {'Slice', 'Reshape', 'Transpose'} <= {ops[n] for n in nodes} and 'Conv' not in {ops[n] for n in nodes}
    layers = select_fp32_layers(network, nodes)
    names = [la.name for la in layers]
    assert len(names) == len(set(names)) and len(set(nodes) & set(names)) > 0.8 * len(nodes)
    kinds = {la.type for la in layers}
    assert {trt.LayerType.MATRIX_MULTIPLY, trt.LayerType.SLICE, trt.LayerType.SHUFFLE} <= kinds
    assert trt.LayerType.CONVOLUTION not in kinds
    stand_ins = [_LayerPrecisionStandIn(la) for la in layers]
    floats = (trt.float32, trt.float16)
    float_layers = [s for s in stand_ins if all(s.get_output(j).dtype in floats for j in range(s.num_outputs))]
    assert pin_fp32(trt, stand_ins) == len(float_layers) > 0
    assert all(s.precision == trt.float32 and s.output_types == {0: trt.float32} for s in float_layers)
    assert all(s.precision is None for s in stand_ins if s not in float_layers)   # shape arithmetic left alone
    assert pin_fp32(trt, layers) == 0    # TensorRT-RTX layers have no precision attribute: nothing to pin


def test_policy_errors_name_the_fix(onnx_files: dict[str, Path], qdq_files: dict[str, Path],
                                    tmp_path: Path) -> None:
    # implicit calibration is gone from strongly typed TensorRT (10.x deprecates it, RTX/11 removed it)
    with pytest.raises(EngineError, match='implicit INT8 calibration.*evit-ros quantize --onnx'):
        build_engine(onnx_files['labels'], tmp_path / 'x.engine', precision='int8', gpu=GPU)
    # INT8 on a strongly typed (mixed-precision) export is refused up front, with the fix
    with pytest.raises(EngineError, match='mixed-precision.*strongly typed.*Export fp32.*evit-ros quantize'):
        build_engine(onnx_files['mixed'], tmp_path / 'x.engine', precision='int8', gpu=GPU,
                     calib_factory=lambda shape, fmt: None)
    with pytest.raises(EngineError, match='explicitly quantized.*--precision int8'):
        build_engine(qdq_files['good'], tmp_path / 'x.engine', precision='fp16', gpu=GPU)
    with pytest.raises(EngineError, match='INT32-quantized biases.*non-zero zero point.*evit-ros quantize'):
        build_engine(qdq_files['ort-defaults'], tmp_path / 'x.engine', precision='int8', gpu=GPU)
    with pytest.raises(EngineError, match='DLA runs FP16/INT8 only'):
        build_engine(onnx_files['labels'], tmp_path / 'x.engine', precision='fp32', gpu=GPU, dla_core=0)
    with pytest.raises(EngineError, match='precision'):
        build_engine(onnx_files['labels'], tmp_path / 'x.engine', precision='bf16', gpu=GPU)
    with pytest.raises(EngineError, match='--opt-batch 3 must be within 1..2'):
        build_engine(onnx_files['mixed'], tmp_path / 'x.engine', precision='fp16', gpu=GPU, opt_batch=3)
    assert not (tmp_path / 'x.engine').exists()


def test_fp16_from_an_fp32_onnx_is_strongly_typed_with_the_whole_scope_fp32(onnx_files: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    """TensorRT >= 10 (and RTX): the fp32 graph is rewritten to mixed precision in memory, built strongly typed."""
    res = build_engine(onnx_files['labels'], tmp_path / 'h.engine', precision='fp16', gpu=GPU)
    assert res.strongly_typed and res.builder_flags == ('STRONGLY_TYPED',)
    side = engine_cache.read_sidecar(res.engine_path)
    assert 'strongly typed mixed precision' in side['precision_plan']
    assert side['fields']['precision_policy'] == engine_cache.PRECISION_POLICY
    assert side['fields']['pinned_layers_sha256'] == engine_cache.pinned_layers_sha256(res.fp32_layers)
    # the whole attention scope, not only MatMul/Div: its Slices, Reshapes/Transposes and constants too
    graph = onnx.load(str(onnx_files['labels'])).graph
    kinds = {n.op_type for n in graph.node if n.name in set(res.fp32_layers)}
    assert {'MatMul', 'Div', 'Add', 'Slice', 'Reshape', 'Transpose'} <= kinds and 'Conv' not in kinds
    # the file on disk is untouched (the rewrite happened in memory) and keys the engine
    assert side['fields']['onnx_sha256'] == file_sha256(onnx_files['labels'])
    assert not side['fp32_inspection']['inspected'] and 'no CUDA GPU' in side['fp32_inspection']['reason']


def test_qdq_onnx_builds_as_explicitly_quantized_strongly_typed_network(qdq_files: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    res = build_engine(qdq_files['good'], tmp_path / 'q.engine', precision='int8', gpu=GPU, opt_batch=1)
    assert res.strongly_typed and res.builder_flags == ('STRONGLY_TYPED',)   # no INT8 flag, no calibrator
    side = engine_cache.read_sidecar(res.engine_path)
    assert side['precision_plan'] == 'explicit INT8 (Q/DQ), strongly typed'
    qdq_names = {n.name for n in onnx.load(str(qdq_files['good'])).graph.node
                 if n.op_type in ('QuantizeLinear', 'DequantizeLinear')}
    assert res.fp32_layers and not qdq_names & set(res.fp32_layers)   # Q/DQ is INT8 by definition, never pinned
    # the network really holds INT8 quantize layers (parsed by TensorRT-RTX, strongly typed)
    _b, network, _p = _network(qdq_files['good'])
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    assert any(la.type == trt.LayerType.QUANTIZE for la in layers)
    assert any(la.get_output(0).dtype == trt.DataType.INT8 for la in layers if la.type == trt.LayerType.QUANTIZE)


def test_parser_errors_are_collected(tmp_path: Path) -> None:
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info('images', TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info('logits', TensorProto.FLOAT, [1, 3, 8, 8])
    node = helper.make_node('NoSuchOp', ['images'], ['logits'], domain='com.example', name='/model/bad')
    graph = helper.make_graph([node], 'bad', [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17), helper.make_opsetid('com.example', 1)])
    bad = tmp_path / 'bad.onnx'
    onnx.save(model, str(bad))
    with pytest.raises(EngineBuildError, match='parser rejected') as ei:
        build_engine(bad, tmp_path / 'bad.engine', precision='fp32', gpu=GPU)
    assert 'NoSuchOp' in str(ei.value)
    assert not (tmp_path / 'bad.engine').exists()


def test_build_engine_cli(onnx_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from evit_ros.cli.main import main
    out = tmp_path / 'cli.engine'
    assert main(['build-engine', '--onnx', str(onnx_files['labels-lowres']), '--precision', 'fp32',
                 '-o', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'built' in text and 'layers' in text and out.is_file()
    side = engine_cache.read_sidecar(out)
    assert side['build_command'].startswith('evit-ros build-engine --onnx ')
    assert (tmp_path / 'timing.cache').is_file()
    assert main(['build-engine', '--onnx', str(onnx_files['labels']), '--precision', 'int8', '-o', str(out)]) == 1
    assert 'evit-ros quantize' in capsys.readouterr().err
    # with calibration frames, a strongly typed TensorRT (RTX, 10.x, 11.x) still refuses implicit INT8, naming the fix
    assert main(['build-engine', '--onnx', str(onnx_files['labels']), '--precision', 'int8', '--calib-images',
                 str(tmp_path), '-o', str(tmp_path / 'i8.engine')]) == 1
    assert 'implicit INT8 calibration; quantize the fp32 ONNX explicitly' in capsys.readouterr().err
    assert not (tmp_path / 'i8.engine').exists()
    # the same build again reuses the engine (same key); --force rebuilds
    assert main(['build-engine', '--onnx', str(onnx_files['labels-lowres']), '--precision', 'fp32',
                 '-o', str(out)]) == 0
    assert 'is up to date' in capsys.readouterr().out
    assert main(['build-engine', '--onnx', str(onnx_files['labels-lowres']), '--precision', 'fp32', '--force',
                 '-o', str(out)]) == 0
    assert 'built' in capsys.readouterr().out
    assert not list(tmp_path.glob('.*.lock'))


def test_cli_opt_batch_defaults_to_the_camera_count(onnx_files: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from evit_ros.cli.main import main
    params = tmp_path / 'p.yaml'
    params.write_text('evit_segmentation:\n  ros__parameters:\n    cameras: [front]\n')
    out = tmp_path / 'm.engine'
    assert main(['build-engine', '--params-file', str(params), '--onnx', str(onnx_files['mixed']),
                 '--precision', 'fp16', '-o', str(out)]) == 0, capsys.readouterr().err
    prof = engine_cache.read_sidecar(out)['fields']['shapes']['profile']
    assert prof == {'min': [1, H, W, 3], 'opt': [1, H, W, 3], 'max': [2, H, W, 3]}   # 1 camera, max batch 2
    assert '--opt-batch 1' in engine_cache.read_sidecar(out)['build_command']


# ---------------------------------------------------------------------------------------------
# after-build inspection: the engine's own layer precisions (IEngineInspector, DETAILED verbosity)

A = '/model/backbone/stages.3/op_list.1/context_module/main/attention'


def test_layer_precision_check_reads_inspector_json() -> None:
    from evit_ros.export.tensorrt_precision import check_layer_precisions
    pinned = [f'{A}/MatMul', f'{A}/MatMul_1', f'{A}/Div', f'{A}/Add', f'{A}/Slice', f'{A}/Relu']
    info = {'Layers': [
        {'Name': f'{A}/MatMul', 'Outputs': [{'Format/Datatype': 'Row major linear FP32'}]},
        {'Name': f'{A}/MatMul_1 + {A}/Div', 'Outputs': [{'Format/Datatype': 'Row major linear FP16 format'}]},
        {'Name': f'{A}/Add + /evit_cast_fp16/x', 'Outputs': [{'Format/Datatype': 'Half'}]},   # fused with a Cast
        {'Name': '{ForeignNode[' + f'{A}/Slice...{A}/Relu' + ']}', 'Outputs': [{'Format/Datatype': 'Half'}]},
        {'Name': '/model/head/Conv', 'Outputs': [{'Format/Datatype': 'Half'}]},               # not pinned
    ]}
    rep = check_layer_precisions(info, pinned)
    assert rep['violations'] == [f'{A}/MatMul_1 + {A}/Div (Row major linear FP16 format)']
    assert rep['checked_fp32'] == 1                      # '/MatMul' did not match '/MatMul_1'
    assert rep['unobserved'] == 3                        # Add (fused with a Cast), Slice, Relu (Myelin)
    ok = check_layer_precisions({'Layers': [{'Name': f'{A}/Div', 'Outputs': [{'Format/Datatype': 'Float'}]}]},
                                [f'{A}/Div'])
    assert ok['violations'] == [] and ok['checked_fp32'] == 1


class _InspectingTRT:
    """TensorRT-RTX for parsing and building; a fake Runtime whose engine reports the given layer formats
    (deserializing needs a GPU). Records the profiling verbosity the builder config was given."""

    def __init__(self, fmt: str) -> None:
        self.fmt, self.verbosity, self.inspected = fmt, None, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(trt, name)

    def Builder(self, logger: Any) -> Any:  # noqa: N802 (TensorRT API name)
        outer, builder = self, trt.Builder(logger)

        class B:
            def __getattr__(self, name: str) -> Any:
                return getattr(builder, name)

            def build_serialized_network(self, network: Any, config: Any) -> Any:
                outer.verbosity = config.profiling_verbosity
                outer.pinned = [network.get_layer(i).name for i in range(network.num_layers)]
                return builder.build_serialized_network(network, config)
        return B()

    def Runtime(self, logger: Any) -> Any:  # noqa: N802
        outer = self

        class Inspector:
            execution_context = None

            def get_engine_information(self, fmt: Any) -> str:
                import json
                outer.inspected += 1
                return json.dumps({'Layers': [{'Name': n, 'Outputs': [{'Format/Datatype': outer.fmt}]}
                                              for n in outer.pinned if '/attention/' in n]})

        class Engine:
            def create_engine_inspector(self) -> Inspector:
                return Inspector()

            def create_execution_context(self) -> Any:
                return type('Ctx', (), {'set_input_shape': lambda s, n, shape: True})()

        return type('R', (), {'deserialize_cuda_engine': lambda s, data: Engine()})()


def test_build_fails_when_a_pinned_layer_is_not_fp32_and_records_the_check(onnx_files: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    bad = _InspectingTRT('Row major linear FP16 format')
    with pytest.raises(EngineBuildError, match='FP32-pinned attention layers in lower precision.*not written'):
        build_engine(onnx_files['mixed'], tmp_path / 'bad.engine', precision='fp16', gpu=GPU, trt_module=bad)
    assert bad.verbosity == trt.ProfilingVerbosity.DETAILED and bad.inspected == 1
    assert not (tmp_path / 'bad.engine').exists() and not list(tmp_path.glob('.*.lock'))
    good = _InspectingTRT('Row major linear FP32')
    res = build_engine(onnx_files['mixed'], tmp_path / 'good.engine', precision='fp16', gpu=GPU, trt_module=good)
    check = engine_cache.read_sidecar(res.engine_path)['fp32_inspection']
    assert check['inspected'] and check['violations'] == [] and check['checked_fp32'] > 0
    assert res.inspection == check


def _features(strong: bool, fp16: bool, calibrator: bool) -> Any:
    """A TensorRT module reduced to the features plan_precision looks at (8.6 / 10.x / RTX)."""
    from types import SimpleNamespace
    creation = SimpleNamespace(**({'STRONGLY_TYPED': 5} if strong else {}), EXPLICIT_BATCH=0)
    flags = SimpleNamespace(**({'FP16': 0, 'INT8': 1, 'OBEY_PRECISION_CONSTRAINTS': 2} if fp16 else {}))
    mod = SimpleNamespace(NetworkDefinitionCreationFlag=creation, BuilderFlag=flags, __version__='x')
    if calibrator:
        mod.IInt8EntropyCalibrator2 = object
    return mod


def test_precision_plan_per_tensorrt_generation() -> None:
    from evit_ros.export.tensorrt_precision import plan_precision
    trt86, trt10, rtx_like = _features(False, True, True), _features(True, True, True), _features(True, False, False)
    p = plan_precision(trt86, 'fp16', mixed=False, qdq=False)           # 8.6: pin the whole scope
    assert not p.strongly_typed and p.pin_layers and p.flags == ('FP16', 'OBEY_PRECISION_CONSTRAINTS')
    p = plan_precision(trt86, 'int8', mixed=False, qdq=False)           # 8.6: implicit calibration stays
    assert p.implicit_int8 and 'INT8' in p.flags and p.pin_layers
    p = plan_precision(trt86, 'int8', mixed=False, qdq=True)            # 8.6 + Q/DQ: no calibrator
    assert not p.implicit_int8 and not p.strongly_typed and {'INT8', 'FP16'} <= set(p.flags)
    for mod in (trt10, rtx_like):
        p = plan_precision(mod, 'fp16', mixed=False, qdq=False)         # >= 10: strongly typed, rewritten
        assert p.strongly_typed and p.rewrite_mixed and p.flags == () and not p.pin_layers
        assert not plan_precision(mod, 'fp16', mixed=True, qdq=False).rewrite_mixed
        p = plan_precision(mod, 'int8', mixed=False, qdq=True)
        assert p.strongly_typed and p.flags == ()
        with pytest.raises(EngineError, match='implicit INT8 calibration'):
            plan_precision(mod, 'int8', mixed=False, qdq=False)
    for mod in (trt86, trt10):
        with pytest.raises(EngineError, match='mixed-precision'):
            plan_precision(mod, 'int8', mixed=True, qdq=False)
    # fp32: strongly typed wherever possible; a release without the weakly typed path (no FP16 flag) is
    # strongly typed whether or not it still lists the (ignored) STRONGLY_TYPED creation flag
    assert not plan_precision(trt86, 'fp32', mixed=False, qdq=False).strongly_typed
    for mod in (trt10, rtx_like, _features(False, False, False)):
        assert plan_precision(mod, 'fp32', mixed=False, qdq=False).strongly_typed
    assert plan_precision(_features(False, False, False), 'fp16', mixed=False, qdq=False).strongly_typed


def _build_in_process(onnx_path: str, engine_path: str, results: Any) -> None:
    from evit_ros.export.tensorrt_build import build_engine as build
    res = build(onnx_path, engine_path, precision='fp32', gpu=GPU, force=False)
    results.put((res.reused, res.cache_key))


def test_two_processes_build_one_engine(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    """Two nodes starting after a JetPack upgrade: one builds under the lock, the other waits and reuses it."""
    import multiprocessing as mp
    ctx = mp.get_context('spawn')
    results = ctx.Queue()
    engine = tmp_path / 'shared.engine'
    procs = [ctx.Process(target=_build_in_process, args=(str(onnx_files['labels']), str(engine), results))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    got = sorted(results.get(timeout=5) for _ in procs)
    assert [r[0] for r in got] == [False, True] and got[0][1] == got[1][1]   # one build, one reuse, same key
    assert sorted(p.name for p in tmp_path.iterdir()) == ['shared.engine', 'shared.engine.json']


def test_pinned_layer_list_goes_to_the_debug_log(onnx_files: dict[str, Path], tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    import logging
    with caplog.at_level(logging.INFO, logger='evit_ros.export.tensorrt_build'):
        res = build_engine(onnx_files['labels-lowres'], tmp_path / 'l.engine', precision='fp16', gpu=GPU)
    info = [r.getMessage() for r in caplog.records]
    assert res.fp32_layers and not any(res.fp32_layers[0] in m for m in info)   # one summary line, no list
    assert any('attention layers FP32' in m for m in info)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger='evit_ros.export.tensorrt_build'):
        build_engine(onnx_files['labels-lowres'], tmp_path / 'l.engine', precision='fp16', gpu=GPU)
    assert any(r.levelno == logging.DEBUG and res.fp32_layers[0] in r.getMessage() for r in caplog.records)


class _Trt86:
    """The TensorRT 8.6 (JetPack 6.0) builder surface over TensorRT-RTX: the ONNX parse is real, the weakly
    typed config (flags, calibrator, profiles) is recorded, the build returns placeholder bytes (RTX cannot
    build weakly typed networks) and deserializing needs a GPU (None)."""

    __version__ = '8.6.2'
    NetworkDefinitionCreationFlag = type('NDCF', (), {'EXPLICIT_BATCH': 0})
    BuilderFlag = type('BF', (), {'FP16': 'FP16', 'INT8': 'INT8', 'OBEY_PRECISION_CONSTRAINTS': 'OBEY',
                                  'GPU_FALLBACK': 'GPU_FALLBACK'})

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass

    def __init__(self) -> None:
        self.flags: list[Any] = []
        self.network_flags: list[int] = []
        self.config: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(trt, name)

    def Builder(self, logger: Any) -> Any:  # noqa: N802 (TensorRT API name)
        outer, real = self, trt.Builder(logger)

        class Config:
            int8_calibrator = None
            calibration_profile = None
            profiling_verbosity = None

            def __init__(self) -> None:
                self.profiles: list[Any] = []

            def set_flag(self, flag: Any) -> None:
                outer.flags.append(flag)

            def add_optimization_profile(self, profile: Any) -> int:
                self.profiles.append(profile)
                return 0

            def set_calibration_profile(self, profile: Any) -> bool:
                self.calibration_profile = profile
                return True

        class B:
            logger = real.logger
            num_DLA_cores = 0

            def create_network(self, flags: int) -> Any:
                outer.network_flags.append(flags)
                return real.create_network(0)

            def create_builder_config(self) -> Any:
                outer.config = Config()
                return outer.config

            def create_optimization_profile(self) -> Any:
                return real.create_optimization_profile()

            def build_serialized_network(self, network: Any, config: Any) -> bytes:
                return b'TensorRT 8.6 engine placeholder'
        return B()

    def Runtime(self, logger: Any) -> Any:  # noqa: N802
        return type('R', (), {'deserialize_cuda_engine': lambda s, data: None})()


def test_tensorrt_86_path_weakly_typed_fp16_and_int8(onnx_files: dict[str, Path], qdq_files: dict[str, Path],
                                                     tmp_path: Path) -> None:
    t86 = _Trt86()
    res = build_engine(onnx_files['labels'], tmp_path / 'h.engine', precision='fp16', gpu=GPU, trt_module=t86)
    assert not res.strongly_typed and t86.flags == ['FP16', 'OBEY'] and t86.network_flags == [1]  # EXPLICIT_BATCH
    assert t86.config.profiling_verbosity == trt.ProfilingVerbosity.DETAILED
    side = engine_cache.read_sidecar(res.engine_path)
    assert side['precision_plan'].startswith('FP16 flag, attention scope pinned FP32')
    assert sorted(side['fields']['builder_flags']) == ['FP16', 'OBEY_PRECISION_CONSTRAINTS']
    # implicit INT8 stays on 8.6: the calibrator is built for the engine's input shape and attached
    t86 = _Trt86()
    seen: list[tuple[tuple[int, ...], str]] = []

    def factory(shape: tuple[int, ...], fmt: str) -> Any:
        seen.append((shape, fmt))
        return 'calibrator'
    res = build_engine(onnx_files['labels'], tmp_path / 'i8.engine', precision='int8', gpu=GPU, trt_module=t86,
                       calib_factory=factory)
    assert t86.flags == ['FP16', 'INT8', 'OBEY'] and t86.config.int8_calibrator == 'calibrator'
    assert seen == [((1, H, W, 3), 'uint8-nhwc')]
    # a Q/DQ ONNX on 8.6: explicit quantization (INT8 + FP16 flags, attention pinned), no calibrator
    t86 = _Trt86()
    res = build_engine(qdq_files['good'], tmp_path / 'q8.engine', precision='int8', gpu=GPU, trt_module=t86,
                       calib_factory=factory)
    assert t86.flags == ['FP16', 'INT8', 'OBEY'] and t86.config.int8_calibrator is None and len(seen) == 1
    assert engine_cache.read_sidecar(res.engine_path)['precision_plan'].startswith('explicit INT8 (Q/DQ) with FP16')
    # and INT8 on a mixed-precision export is refused here too
    with pytest.raises(EngineError, match='mixed-precision'):
        build_engine(onnx_files['mixed'], tmp_path / 'x.engine', precision='int8', gpu=GPU, trt_module=_Trt86(),
                     calib_factory=factory)


def test_quantize_without_a_zero_point_is_refused_as_uint8() -> None:
    """ONNX types a QuantizeLinear without a zero point as uint8: ONNX Runtime would clamp to [0, 255] where
    TensorRT runs INT8, so verify-engine could not compare them; the check asks for an explicit INT8 0."""
    from onnx import ModelProto, TensorProto, helper

    from evit_ros.export.tensorrt_precision import check_qdq_for_tensorrt

    def graph(zero_point: bool, output_dtype: int = 0) -> ModelProto:
        inits = [helper.make_tensor('s', TensorProto.FLOAT, [], [0.1])]
        q_in, dq_in = ['x', 's'], ['q', 's']
        if zero_point:
            inits.append(helper.make_tensor('z', TensorProto.INT8, [], [0]))
            q_in, dq_in = q_in + ['z'], dq_in + ['z']
        attrs = {'output_dtype': output_dtype} if output_dtype else {}
        nodes = [helper.make_node('QuantizeLinear', q_in, ['q'], **attrs),
                 helper.make_node('DequantizeLinear', dq_in, ['y'])]
        g = helper.make_graph(nodes, 'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, [4])], inits)
        # IR 10 (opset 21's): onnx's default IR may be newer than an ONNX Runtime reads (1.23, the last for cp310,
        # reads IR <= 11)
        return helper.make_model(g, opset_imports=[helper.make_opsetid('', 21 if output_dtype else 17)], ir_version=10)

    check_qdq_for_tensorrt(graph(True))
    check_qdq_for_tensorrt(graph(False, output_dtype=TensorProto.INT8))   # opset 21 names the type itself
    with pytest.raises(EngineError, match='1 QuantizeLinear nodes without a zero point.*uint8.*explicit INT8'):
        check_qdq_for_tensorrt(graph(False))
    # the same graph really differs on ONNX Runtime: negative values vanish without the INT8 zero point
    ort = pytest.importorskip('onnxruntime')
    x = np.array([-1.0, -0.3, 0.2, 1.0], np.float32)
    run = {zp: ort.InferenceSession(graph(zp).SerializeToString(), providers=['CPUExecutionProvider']).run(
        None, {'x': x})[0] for zp in (True, False)}
    np.testing.assert_allclose(run[True], x, atol=0.051)
    assert (run[False] >= 0).all()
    typed = ort.InferenceSession(graph(False, TensorProto.INT8).SerializeToString(),
                                 providers=['CPUExecutionProvider']).run(None, {'x': x})[0]
    np.testing.assert_allclose(typed, x, atol=0.051)              # INT8 by its output_dtype: negatives kept
