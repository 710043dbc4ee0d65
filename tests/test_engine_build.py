"""TensorRT engines from our ONNX graphs, built for real with TensorRT-RTX on CPU (no GPU needed).

TensorRT-RTX is strongly typed (no FP16 builder flag), so fp32 graphs build as fp32 and fp16 needs the
mixed-precision export; the weakly typed TensorRT 8.6/10 path is covered by mypy against the stubs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
import torch

from evit_ros import contract
from evit_ros.errors import EngineBuildError, EngineError
from evit_ros.export import engine_cache
from evit_ros.export.onnx_export import export_onnx

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
                                     gpu_name=GPU[0], compute_capability=GPU[1], precision='fp32')
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
    """The FP16 builder-flag path: ONNX attention nodes -> network layers (real parse) -> FP32 constraints."""
    from evit_ros.export.onnx_export import fp32_nodes, read_metadata, scopes_from_metadata
    from evit_ros.export.tensorrt_build import pin_fp32, select_fp32_layers
    path = onnx_files['labels']
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    network, _parser = parse_onnx(trt, builder, path, strongly_typed=False)
    nodes = fp32_nodes(onnx.load(str(path)).graph, scopes_from_metadata(read_metadata(path)))
    layers = select_fp32_layers(network, nodes)
    names = [la.name for la in layers]
    assert set(nodes) <= set(names) and len(names) == len(set(names))
    kinds = {la.type for la in layers}
    assert trt.LayerType.MATRIX_MULTIPLY in kinds and trt.LayerType.CONVOLUTION not in kinds
    stand_ins = [_LayerPrecisionStandIn(la) for la in layers]
    assert pin_fp32(trt, stand_ins) == len(layers)
    assert all(s.precision == trt.float32 and s.output_types == {0: trt.float32} for s in stand_ins)
    assert pin_fp32(trt, layers) == 0    # TensorRT-RTX layers have no precision attribute: nothing to pin


def test_policy_errors_name_the_fix(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EngineError, match='--mixed-precision-fp16'):
        build_engine(onnx_files['labels'], tmp_path / 'x.engine', precision='fp16', gpu=GPU)
    with pytest.raises(EngineError, match='--calib-images'):
        build_engine(onnx_files['labels'], tmp_path / 'x.engine', precision='int8', gpu=GPU)
    with pytest.raises(EngineError, match='precision'):
        build_engine(onnx_files['labels'], tmp_path / 'x.engine', precision='bf16', gpu=GPU)
    assert not (tmp_path / 'x.engine').exists()


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
    assert 'calib' in capsys.readouterr().err
    # with calibration frames, a strongly typed TensorRT (RTX, 11.x) still refuses implicit INT8, naming the fix
    assert main(['build-engine', '--onnx', str(onnx_files['labels']), '--precision', 'int8', '--calib-images',
                 str(tmp_path), '-o', str(tmp_path / 'i8.engine')]) == 1
    assert 'no implicit INT8 calibration; build fp16 or fp32' in capsys.readouterr().err
    assert not (tmp_path / 'i8.engine').exists()
