"""`evit-ros quantize`: a real Q/DQ INT8 quantization of the demo model at a small size, checked structurally
(what TensorRT requires) and numerically (ONNX Runtime against the FP32 parent on held-out scenes)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from evit_ros import contract
from evit_ros.backends import SYNTHETIC_CHECKPOINT
from evit_ros.cli.main import main
from evit_ros.errors import DataError, ExportError
from evit_ros.export.quantize import META_QUANTIZATION, check_qdq, quantize_onnx
from evit_ros.synthetic.scenes import generate_scene

MODEL = 'efficientvit-seg-b0-cityscapes'
H, W = 64, 128


@pytest.fixture(scope='module')
def fp32_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model at 64x128, dynamic batch 1..2 (exported once per test session, shared with verify-engine)."""
    import shutil

    from evit_ros.backends import ensure_onnx
    from evit_ros.config import InputConfig, ModelConfig
    cached = ensure_onnx(ModelConfig(name=MODEL), InputConfig(height=H, width=W), 'labels+confidence',
                         checkpoint=str(SYNTHETIC_CHECKPOINT), max_batch=2)
    return Path(shutil.copy(cached, tmp_path_factory.mktemp('quant') / 'fp32.onnx'))


def _scenes(seeds: range, hw: tuple[int, int] = (96, 192)) -> list[np.ndarray]:
    """Camera frames at another size than the graph's: the node's preprocessing resizes them."""
    return [generate_scene(s, *hw)[0] for s in seeds]


@pytest.fixture(scope='module')
def int8(fp32_onnx: Path) -> tuple[Path, Any]:
    out = fp32_onnx.parent / 'int8.onnx'
    report = quantize_onnx(fp32_onnx, out, iter(_scenes(range(1000, 1012))), max_frames=8, threads=1)
    return out, report


def _session(p: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(p), so, providers=['CPUExecutionProvider'])


def test_qdq_structure_is_what_tensorrt_needs(fp32_onnx: Path, int8: tuple[Path, Any]) -> None:
    path, report = int8
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    meta = {p.key: p.value for p in model.metadata_props}
    scopes = json.loads(meta[contract.META_FP32_SCOPES])
    assert len(scopes) == 4 and report.frames == 8

    qdq = [n for n in model.graph.node if n.op_type in ('QuantizeLinear', 'DequantizeLinear')]
    assert qdq
    for n in qdq:   # symmetric INT8 everywhere: an explicit int8 zero point of 0
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name

    convs = {n.name: n for n in model.graph.node if n.op_type == 'Conv'}
    quantized = set(report.quantized_nodes)
    assert quantized and quantized <= set(convs)
    for name in quantized:
        conv = convs[name]
        w_dq = producer[conv.input[1]]
        w_q = producer[w_dq.input[0]]
        assert (w_dq.op_type, w_q.op_type) == ('DequantizeLinear', 'QuantizeLinear')
        weight = inits[w_q.input[0]]
        scale = inits[w_q.input[1]]
        # per-channel (output channels, axis 0), FP32 weights kept behind the Q -> DQ pair
        assert weight.dtype == np.float32 and scale.shape == (weight.shape[0],), name
        axis = {a.name: a.i for a in w_q.attribute}.get('axis', 1)
        assert axis == 0, name
        x_dq = producer[conv.input[0]]
        assert x_dq.op_type == 'DequantizeLinear' and inits[x_dq.input[1]].size == 1   # per-tensor activation
        if len(conv.input) > 2:
            assert conv.input[2] in inits   # bias stays FP32 (no INT32 DQ)

    # nothing inside an attention scope is quantized or fed by a dequantizer
    for node in model.graph.node:
        if any(node.name.startswith(s) for s in scopes):
            assert node.op_type not in ('QuantizeLinear', 'DequantizeLinear'), node.name
            for i in node.input:
                assert i not in producer or producer[i].op_type != 'DequantizeLinear', (node.name, i)
    attention_matmuls = [n for n in model.graph.node if n.op_type == 'MatMul']
    assert len(attention_matmuls) == 8 and not set(n.name for n in attention_matmuls) & quantized
    # the head outside the network (upsampling, argmax, casts) and the exact upsampling are untouched
    for node in model.graph.node:
        if node.op_type == 'Conv' and (not node.name.startswith('/model/') or 'exact_upsample' in node.name):
            assert node.name not in quantized
            assert producer.get(node.input[0]) is None or producer[node.input[0]].op_type != 'DequantizeLinear'
    # export metadata kept, recipe recorded
    fp32_meta = {p.key: p.value for p in onnx.load(str(fp32_onnx), load_external_data=False).metadata_props}
    assert {k: meta[k] for k in fp32_meta} == fp32_meta
    recipe = json.loads(meta[META_QUANTIZATION])
    assert recipe['calib_frames'] == 8 and recipe['weights'] == 'int8 symmetric per-channel'
    assert check_qdq(model, scopes)['per_channel_weights'] == len(quantized)


def test_int8_agrees_with_fp32_on_held_out_scenes(fp32_onnx: Path, int8: tuple[Path, Any]) -> None:
    from evit_ros.pipeline.preprocess import Preprocessor
    fp32, q = _session(fp32_onnx), _session(int8[0])
    pre = Preprocessor((H, W))
    frames = _scenes(range(2000, 2006))
    agree = []
    for f in frames:
        x = pre.run([f]).copy()
        ref, ref_conf = fp32.run(['labels', 'confidence'], {'images': x})
        got, got_conf = q.run(['labels', 'confidence'], {'images': x})
        assert got.dtype == np.uint8 and got.shape == (1, H, W)
        agree.append(np.mean(ref == got))
        assert np.mean(np.abs(ref_conf.astype(int) - got_conf.astype(int))) < 20
    assert np.mean(agree) >= 0.95, agree
    assert int8[1].label_agreement >= 0.95


def test_tensorrt_parser_accepts_the_qdq_graph(int8: tuple[Path, Any]) -> None:
    rtx = pytest.importorskip('tensorrt_rtx_bindings', reason='TensorRT-RTX (CPU parser) is not installed')
    logger = rtx.Logger(rtx.Logger.ERROR)
    network = rtx.Builder(logger).create_network(0)
    parser = rtx.OnnxParser(network, logger)
    assert parser.parse_from_file(str(int8[0])), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    types = {str(network.get_layer(i).type).rsplit('.', 1)[-1] for i in range(network.num_layers)}
    assert {'QUANTIZE', 'DEQUANTIZE', 'CONVOLUTION'} <= types


def test_check_qdq_refuses_what_tensorrt_cannot_run(int8: tuple[Path, Any]) -> None:
    model = onnx.load(str(int8[0]))
    scopes = json.loads({p.key: p.value for p in model.metadata_props}[contract.META_FP32_SCOPES])
    zp_name = next(n.input[2] for n in model.graph.node if n.op_type == 'QuantizeLinear')
    init = next(i for i in model.graph.initializer if i.name == zp_name)
    bad = numpy_helper.to_array(init).copy()
    bad.flat[0] = 3
    init.CopyFrom(numpy_helper.from_array(bad, zp_name))
    with pytest.raises(ExportError, match='zero point'):
        check_qdq(model, scopes)
    # a dequantizer feeding an attention MatMul
    model = onnx.load(str(int8[0]))
    mm = next(n for n in model.graph.node if n.op_type == 'MatMul')
    dq = next(n for n in model.graph.node if n.op_type == 'DequantizeLinear')
    mm.input[0] = dq.output[0]
    with pytest.raises(ExportError, match='attention'):
        check_qdq(model, scopes)


def test_quantize_refuses_bad_inputs(fp32_onnx: Path, int8: tuple[Path, Any], tmp_path: Path) -> None:
    with pytest.raises(ExportError, match='already quantized'):
        quantize_onnx(int8[0], tmp_path / 'again.onnx', iter(_scenes(range(2))), max_frames=2)
    with pytest.raises(DataError, match='no calibration frames'):
        quantize_onnx(fp32_onnx, tmp_path / 'x.onnx', iter([]), max_frames=2)
    with pytest.raises(DataError, match='max-frames 0 must be in'):
        quantize_onnx(fp32_onnx, tmp_path / 'x.onnx', iter(_scenes(range(2))), max_frames=0)
    with pytest.raises(ExportError, match='is the input'):
        quantize_onnx(fp32_onnx, fp32_onnx, iter(_scenes(range(2))), max_frames=2)
    assert not (tmp_path / 'x.onnx').exists()


def test_cli_quantizes_from_an_image_folder(fp32_onnx: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    for cam in ('front', 'rear'):
        (tmp_path / 'imgs' / cam).mkdir(parents=True)
        for i, f in enumerate(_scenes(range(3000 + 10 * len(cam), 3003 + 10 * len(cam)))):
            cv2.imwrite(str(tmp_path / 'imgs' / cam / f'{i:03d}.png'), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    out = tmp_path / 'cli_int8.onnx'
    assert main(['quantize', '--onnx', str(fp32_onnx), '--calib-dir', str(tmp_path / 'imgs'), '--max-frames', '4',
                 '--threads', '1', '-o', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'convolutions INT8' in text and '4 frames' in text and out.is_file()
    assert main(['quantize', '--onnx', str(fp32_onnx), '--calib-bag', str(tmp_path), '-o', str(out)]) == 1
    assert '--calib-topic' in capsys.readouterr().err


def test_camera_frames_interleave_cameras_and_skip_bad_files(tmp_path: Path) -> None:
    from evit_ros.export.quantize import camera_frames
    for cam, value in (('front', 10), ('rear', 200)):
        (tmp_path / cam).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / cam / f'{i}.png'), np.full((8, 16, 3), value + i, np.uint8))
    (tmp_path / 'front' / '9.png').write_bytes(b'not a png')        # unreadable: skipped with a warning
    got = [int(f[0, 0, 0]) for f in camera_frames(folder=tmp_path)]
    assert got == [10, 200, 11, 201, 12, 202]
    (tmp_path / 'empty' / 'sub').mkdir(parents=True)
    with pytest.raises(DataError, match='has no images'):
        camera_frames(folder=tmp_path / 'empty')
    with pytest.raises(DataError, match='does not exist'):
        camera_frames(folder=tmp_path / 'missing')
