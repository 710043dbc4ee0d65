"""ONNX export of the real b0 network (deterministic random weights, 64x128): every head verified by
onnx.checker and ONNX Runtime vs PyTorch, metadata, in-graph resize, dynamic batch, dtypes, failures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from evit_ros import contract
from evit_ros.errors import ExportError
from evit_ros.export.fp32_scopes import FP32_OP_TYPES
from evit_ros.export.graph import DeployGraph
from evit_ros.export.onnx_export import ExportReport, export_onnx, read_metadata

MODEL = 'efficientvit-seg-b0-cityscapes'
H, W = 64, 128


def make_b0() -> torch.nn.Module:
    from evit_ros.model import create_model
    torch.manual_seed(0)
    return create_model(MODEL, pretrained=False).eval()


@pytest.fixture(scope='module')
def b0() -> torch.nn.Module:
    torch.set_num_threads(1)
    return make_b0()


@pytest.fixture(scope='module')
def exports(b0: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExportReport]:
    d = tmp_path_factory.mktemp('onnx')
    return {head: export_onnx(MODEL, d / f'{head}.onnx', height=H, width=W, model=b0, head=head)
            for head in contract.HEADS}


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=['CPUExecutionProvider'])


def _frames(n: int, h: int, w: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


EXPECTED = {  # head -> [(name, dtype, shape)]
    'logits': [('logits', np.float32, (1, 19, H // 8, W // 8))],
    'labels': [('labels', np.uint8, (1, H, W))],
    'labels-lowres': [('labels', np.uint8, (1, H // 8, W // 8))],
    'labels+confidence': [('labels', np.uint8, (1, H, W)), ('confidence', np.uint8, (1, H, W))],
    'labels+logits': [('labels', np.uint8, (1, H, W)), ('logits', np.float32, (1, 19, H // 8, W // 8))],
}


@pytest.mark.parametrize('head', contract.HEADS)
def test_every_head_is_verified_and_carries_metadata(exports: dict[str, ExportReport], b0: torch.nn.Module,
                                                     head: str) -> None:
    rep = exports[head]
    assert rep.path.is_file() and rep.max_rel_logits_error <= 1e-4 and rep.label_agreement >= 0.999
    meta = read_metadata(rep.path)
    assert meta == rep.metadata
    assert meta[contract.META_MODEL] == MODEL and meta[contract.META_HEAD] == head
    assert meta[contract.META_DATASET] == 'cityscapes'
    assert json.loads(meta[contract.META_CLASSES])[0] == 'road' and len(json.loads(meta[contract.META_COLORS])) == 19
    assert meta[contract.META_INPUT_FORMAT] == 'uint8-nhwc' and meta[contract.META_BATCH] == '1'
    assert meta[contract.META_INPUT_SIZE] == meta[contract.META_MODEL_SIZE] == f'{H}x{W}'
    assert json.loads(meta[contract.META_MEAN]) == list(contract.IMAGENET_MEAN)
    assert json.loads(meta[contract.META_EXPORTER])['opset'] == 17
    assert json.loads(meta[contract.META_FP32_SCOPES])
    sess = _session(rep.path)
    (inp,) = sess.get_inputs()
    assert inp.name == contract.INPUT_NAME and inp.type == 'tensor(uint8)' and inp.shape == [1, H, W, 3]
    x = _frames(1, H, W)
    got = sess.run(None, {contract.INPUT_NAME: x})
    assert [o.name for o in sess.get_outputs()] == [e[0] for e in EXPECTED[head]]
    assert [tuple(o.shape) for o in sess.get_outputs()] == [e[2] for e in EXPECTED[head]]
    for arr, (_name, dtype, shape) in zip(got, EXPECTED[head], strict=True):
        assert arr.dtype == dtype and arr.shape == shape
    with torch.inference_mode():
        ref = DeployGraph(b0, head=head, model_hw=(H, W)).eval()(torch.from_numpy(x))
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    if head == 'logits':
        r = ref[0].numpy()
        assert np.abs(got[0] - r).max() / np.abs(r).max() <= 1e-4
    else:
        assert (got[0] == ref[0].numpy()).mean() >= 0.999
        assert int(got[0].max()) < 19
    if head == 'labels+confidence':
        assert np.abs(got[1].astype(int) - ref[1].numpy().astype(int)).max() <= 2
        assert got[1].min() >= 255 // 19  # max softmax of 19 classes is at least 1/19


@pytest.mark.parametrize('head', ['labels', 'labels+confidence'])
def test_no_uint8_intermediate_tensors(exports: dict[str, ExportReport], head: str) -> None:
    """TensorRT's ONNX parser takes UINT8 only at network inputs and outputs (checked here without TensorRT)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(exports[head].path)))
    io = {v.name for v in list(model.graph.input) + list(model.graph.output)}
    uint8 = [v.name for v in model.graph.value_info
             if v.type.tensor_type.elem_type == onnx.TensorProto.UINT8 and v.name not in io]
    assert uint8 == []
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert all(producers[o.name] == 'Cast' for o in model.graph.output)   # uint8 made by the very last op


# Cast conversions TensorRT 8.6 (JetPack 6.0) builds: UINT8 only to/from FLOAT and HALF (NvInferRuntimeBase.h)
_TRT86_UINT8_PARTNERS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}


def _cast_types(model: onnx.ModelProto) -> list[tuple[str, int, int]]:
    """(node, from, to) for every Cast, the source type taken from shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    out = []
    for n in inferred.graph.node:
        if n.op_type == 'Cast':
            to = next(a.i for a in n.attribute if a.name == 'to')
            out.append((n.name, types.get(n.input[0], onnx.TensorProto.UNDEFINED), to))
    return out


@pytest.mark.parametrize('head', contract.HEADS)
def test_every_uint8_cast_goes_through_float(exports: dict[str, ExportReport], head: str) -> None:
    """Every Cast to or from UINT8 pairs it with FLOAT/FLOAT16, so TensorRT 8.6 builds every head."""
    casts = _cast_types(onnx.load(str(exports[head].path)))
    u8 = onnx.TensorProto.UINT8
    assert all(src != onnx.TensorProto.UNDEFINED for _n, src, _t in casts), casts
    bad = [(n, onnx.TensorProto.DataType.Name(s), onnx.TensorProto.DataType.Name(t)) for n, s, t in casts
           if (t == u8 and s not in _TRT86_UINT8_PARTNERS) or (s == u8 and t not in _TRT86_UINT8_PARTNERS)]
    assert bad == []
    outputs_u8 = [o.name for o in onnx.load(str(exports[head].path)).graph.output
                  if o.type.tensor_type.elem_type == u8]
    # every uint8 output is made by a FLOAT -> UINT8 cast; the uint8 input is read by a UINT8 -> FLOAT cast
    assert sum(t == u8 for _n, _s, t in casts) == len(outputs_u8)
    assert [(s, t) for _n, s, t in casts if s == u8] == [(u8, onnx.TensorProto.FLOAT)]


def test_fp32_scopes_cover_every_attention_matmul_and_div(exports: dict[str, ExportReport],
                                                         b0: torch.nn.Module) -> None:
    rep = exports['labels']
    graph = onnx.load(str(rep.path)).graph
    n_attention = sum(1 for m in b0.modules() if type(m).__name__ == 'LiteMLA')
    assert n_attention > 0
    # independent count: the network has MatMul and Div nodes only in its attention cores
    matmuls = {n.name for n in graph.node if n.op_type == 'MatMul'}
    divs = {n.name for n in graph.node if n.op_type == 'Div' and n.name.startswith('/model/')}
    assert len(matmuls) == 2 * n_attention and len(divs) == n_attention
    pinned = set(rep.fp32_nodes)
    assert matmuls <= pinned and divs <= pinned
    ops = {n.name: n.op_type for n in graph.node}
    assert {ops[n] for n in pinned} <= set(FP32_OP_TYPES)
    # one Pad/Concat per core appends v's row of ones (the normalizer); nothing outside the cores is pinned
    assert sum(ops[n] in ('Pad', 'Concat') for n in pinned) == n_attention
    assert sum(ops[n] == 'Relu' for n in pinned) == 2 * n_attention  # relu(q), relu(k)
    assert not any(ops[n] == 'Conv' for n in pinned)


def test_export_is_deterministic_single_file(b0: torch.nn.Module, exports: dict[str, ExportReport],
                                             tmp_path: Path) -> None:
    again = export_onnx(MODEL, tmp_path / 'again.onnx', height=H, width=W, model=b0, head='logits')
    assert again.path.read_bytes() == exports['logits'].path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['again.onnx']
    model = onnx.load(str(again.path), load_external_data=False)
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    assert {o.domain: o.version for o in model.opset_import}[''] == 17 and model.producer_name == 'evit_ros'


def test_in_graph_resize_dynamic_batch_and_int32_labels(b0: torch.nn.Module, exports: dict[str, ExportReport],
                                                        tmp_path: Path) -> None:
    rep = export_onnx(MODEL, tmp_path / 'dyn.onnx', height=H, width=W, model=b0, head='labels',
                      input_size=(96, 160), max_batch=4, labels_dtype='int32')
    # the dynamic batch adds integer shape arithmetic to the attention scopes; only the float math is pinned
    def op_counts(path: Path, names: tuple[str, ...]) -> dict[str, int]:
        ops = {n.name: n.op_type for n in onnx.load(str(path)).graph.node}
        return {t: sum(ops[n] == t for n in names) for t in set(ops[n] for n in names)}
    static = exports['labels']
    assert op_counts(rep.path, rep.fp32_nodes) == op_counts(static.path, static.fp32_nodes)
    meta = rep.metadata
    assert meta[contract.META_BATCH] == 'dynamic:4' and meta[contract.META_INPUT_SIZE] == '96x160'
    assert meta[contract.META_MODEL_SIZE] == f'{H}x{W}' and meta[contract.META_LABELS_DTYPE] == 'int32'
    sess = _session(rep.path)
    inp = sess.get_inputs()[0]
    assert inp.shape[1:] == [96, 160, 3] and isinstance(inp.shape[0], str)
    (out,) = sess.get_outputs()
    assert out.shape[1:] == [96, 160] and out.shape[0] == inp.shape[0]   # declared, not symbolic
    resizes = [n for n in onnx.load(str(rep.path)).graph.node if n.op_type == 'Resize']
    assert len(resizes) >= 2   # camera->model resize in the graph + logits upsampling
    deploy = DeployGraph(b0, head='labels', model_hw=(H, W), input_hw=(96, 160), labels_dtype='int32').eval()
    for n in (1, 3):
        x = _frames(n, 96, 160, seed=n)
        (labels,) = sess.run(None, {contract.INPUT_NAME: x})
        assert labels.dtype == np.int32 and labels.shape == (n, 96, 160)
        with torch.inference_mode():
            ref = deploy(torch.from_numpy(x)).numpy()
        assert (labels == ref).mean() >= 0.999
        if n == 3:  # each frame is independent of the others in the batch
            (single,) = sess.run(None, {contract.INPUT_NAME: x[1:2]})
            assert (single[0] == labels[1]).mean() >= 0.999


def test_float_nchw_input(b0: torch.nn.Module, tmp_path: Path) -> None:
    rep = export_onnx(MODEL, tmp_path / 'f.onnx', height=H, width=W, model=b0, head='labels-lowres',
                      input_format='float-nchw')
    inp = _session(rep.path).get_inputs()[0]
    assert inp.type == 'tensor(float)' and inp.shape == [1, 3, H, W]
    assert rep.metadata[contract.META_INPUT_FORMAT] == 'float-nchw'


class TraceDiffers(torch.nn.Module):
    """Computes something else while traced than when run eagerly: the export cannot match PyTorch."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return y * 1.5 if torch.jit.is_tracing() else y


def test_parity_failure_is_an_error_and_writes_nothing(b0: torch.nn.Module, tmp_path: Path) -> None:
    out = tmp_path / 'bad.onnx'
    with pytest.raises(ExportError, match='differ from PyTorch'):
        export_onnx(MODEL, out, height=H, width=W, model=TraceDiffers(b0), head='labels')
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_errors(b0: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match='multiple of 32'):
        export_onnx(MODEL, tmp_path / 'x.onnx', height=70, width=W, model=b0)
    with pytest.raises(ExportError, match='head'):
        export_onnx(MODEL, tmp_path / 'x.onnx', height=H, width=W, model=b0, head='masks')
    with pytest.raises(ExportError, match='.onnx'):
        export_onnx(MODEL, tmp_path / 'x.bin', height=H, width=W, model=b0)
    with pytest.raises(ExportError, match='checkpoint'):
        export_onnx(MODEL, tmp_path / 'x.onnx', height=H, width=W, checkpoint=str(tmp_path / 'none.pt'))
    with pytest.raises(ExportError, match='does not exist'):
        read_metadata(tmp_path / 'none.onnx')


def test_mixed_precision_export_keeps_attention_fp32(b0: torch.nn.Module, tmp_path: Path) -> None:
    rep = export_onnx(MODEL, tmp_path / 'mp.onnx', height=H, width=W, model=b0, head='labels',
                      mixed_precision_fp16=True)
    assert json.loads(rep.metadata[contract.META_EXPORTER])['mixed_precision_fp16'] is True
    model = onnx.shape_inference.infer_shapes(onnx.load(str(rep.path)))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    nodes = model.graph.node
    assert any(n.op_type == 'Cast' and n.name.startswith('/evit_cast_') for n in nodes)
    for n in nodes:
        if n.op_type in ('MatMul', 'Div') and n.name.startswith('/model/'):
            assert all(types[t] == onnx.TensorProto.FLOAT for t in n.input), n.name
        if n.op_type == 'Conv' and n.name.startswith('/model/'):   # the network; the head stays fp32
            assert types[n.input[1]] == onnx.TensorProto.FLOAT16, n.name
    assert rep.max_rel_logits_error <= 2e-2 and rep.label_agreement >= 0.99


def test_export_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from evit_ros.cli.main import main
    out = tmp_path / 'cli.onnx'
    rc = main(['export', '--model', MODEL, '--height', str(H), '--width', str(W), '--head', 'labels-lowres',
               '--max-batch', '2', '-o', str(out)])
    assert rc == 0 and out.is_file()
    text = capsys.readouterr().out
    assert 'exported efficientvit-seg-b0-cityscapes' in text and 'labels agree' in text
    assert read_metadata(out)[contract.META_BATCH] == 'dynamic:2'
    assert main(['export', '--model', MODEL, '--height', '60', '--width', str(W), '-o', str(out)]) == 1
