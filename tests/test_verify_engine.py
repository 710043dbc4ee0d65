"""`evit-ros verify-engine` on a CPU machine.

The engine side is the node's real TensorRTBackend with the GPU-only calls faked (tests/test_backend_tensorrt.py:
TensorRT's runtime/engine/context and the CUDA memory); the fake execution context computes its outputs with
ONNX Runtime. An engine whose outputs equal ONNX Runtime's must pass; one whose labels are perturbed on a known
share of the pixels must fail with a non-zero exit, at the threshold of its precision.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from evit_ros import contract
from evit_ros.backends import SYNTHETIC_CHECKPOINT
from evit_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
from evit_ros.backends.tensorrt_backend import TensorRTBackend
from evit_ros.cli import verify_engine_cmd
from evit_ros.cli.main import main
from evit_ros.device import identity
from evit_ros.eval.verify_engine import Thresholds, compare, onnx_from_sidecar
from evit_ros.export import engine_cache
from evit_ros.export.onnx_export import read_metadata
from evit_ros.fileio import file_sha256
from evit_ros.synthetic.scenes import generate_scene

try:   # the cuda-python TensorRT backend's fakes (tests/trt_fakes.py)
    import trt_fakes
except ImportError:   # the torch.cuda backend's fakes
    trt_fakes = None
    from test_backend_tensorrt import GPU_NAME, TRT_VERSION, FakeTorch, FakeTRT
else:
    from trt_fakes import GPU_CC, GPU_MEM_MB, GPU_NAME, GPU_SMS, FakeCudart, FakeTRT, rtx
    TRT_VERSION = str(rtx.__version__) if rtx is not None else '10.3.0'

MODEL = 'efficientvit-seg-b0-cityscapes'
H, W = 64, 128


@pytest.fixture(scope='module')
def onnx_file() -> Path:
    """The demo model at 64x128, dynamic batch 1..2 (exported once per test session into EVIT_ROS_CACHE)."""
    from evit_ros.backends import ensure_onnx
    from evit_ros.config import InputConfig, ModelConfig
    return ensure_onnx(ModelConfig(name=MODEL), InputConfig(height=H, width=W), 'labels+confidence',
                       checkpoint=str(SYNTHETIC_CHECKPOINT), max_batch=2)


@pytest.fixture(scope='module')
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp('frames')
    for i in range(4):   # camera frames of another size: both runners get the node's preprocessing
        rgb = generate_scene(4000 + i, 96, 192)[0]
        cv2.imwrite(str(d / f'{i:03d}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return d


def _engine(onnx_file: Path, directory: Path, precision: str) -> Path:
    """Engine bytes the fake runtime accepts, with a real sidecar for this fake GPU and TensorRT."""
    ep = directory / f'b0_{precision}.engine'
    shapes = {'input': 'images', 'shape': [-1, H, W, 3],
              'profile': {'min': [1, H, W, 3], 'opt': [1, H, W, 3], 'max': [2, H, W, 3]}}
    if trt_fakes is None:
        fields = engine_cache.key_fields(file_sha256(onnx_file), TRT_VERSION, GPU_NAME, '8.7', precision, shapes, [])
    else:
        gpu = identity.GpuIdentity(GPU_NAME, f'{GPU_CC[0]}.{GPU_CC[1]}', GPU_SMS, GPU_MEM_MB,
                                       identity.board_model())
        fields = engine_cache.key_fields(file_sha256(onnx_file), TRT_VERSION, gpu, precision, shapes, [])
    doc = engine_cache.make_sidecar(fields, model_metadata=read_metadata(onnx_file), fp32_layers=[],
                                    rebuild_command=engine_cache.build_command(onnx_file, ep, precision))
    engine_cache.write_engine(ep, b'serialized engine', doc)
    return ep


class PerturbedSession:
    """The fake engine's ONNX Runtime session, with the class id changed on a fixed share of the label pixels."""

    def __init__(self, session: Any, fraction: float) -> None:
        self.session, self.fraction = session, fraction

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outs = self.session.run(names, feeds)
        for i, name in enumerate(names):
            if name == contract.LABELS_NAME:
                labels = outs[i].copy()
                flat = labels.reshape(labels.shape[0], -1)   # every (1/fraction)-th pixel: spread over all classes
                step = int(round(1 / self.fraction))
                flat[:, ::step] = (flat[:, ::step] + 1) % 19
                outs[i] = labels
        return outs


@pytest.fixture(autouse=True)
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake CUDA runtime behind the TensorRT backend (cuda-python backend only)."""
    if trt_fakes is not None:
        from evit_ros.device import cuda_runtime
        monkeypatch.setattr(cuda_runtime, 'cudart', FakeCudart())


def _trt_backend(engine: Path, onnx_file: Path, precision: str, perturb: float = 0.0) -> TensorRTBackend:
    """The node's TensorRT backend; only TensorRT's runtime and the CUDA calls are fakes."""
    if trt_fakes is None:
        ft = FakeTorch()
        trt = FakeTRT(ft, onnx_file)
        kw: dict[str, Any] = {'torch_module': ft}
    else:
        from evit_ros.device import cuda_runtime
        trt = FakeTRT(cuda_runtime.cudart, onnx_file, TRT_VERSION)
        kw = {}
    if perturb:
        trt.session = PerturbedSession(trt.session, perturb)
    return TensorRTBackend(engine, precision=precision, build_if_stale=False, trt_module=trt, **kw)


def _frames(images: Path) -> list[np.ndarray]:
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(images.iterdir())]


def test_identical_engine_passes_with_full_report(onnx_file: Path, images: Path, tmp_path: Path) -> None:
    ep = _engine(onnx_file, tmp_path, 'fp16')
    with _trt_backend(ep, onnx_file, 'fp16') as eng, OnnxRuntimeBackend(onnx_file, threads=1, device='cpu') as ref:
        report = compare(eng, ref, _frames(images), thresholds=Thresholds.for_precision('fp16'), precision='fp16',
                         class_names=ref.io.class_names)
    assert report.passed and report.failures == [] and report.frames == 4 and report.pixels == 4 * H * W
    assert report.label_agreement == 100.0 and report.miou_vs_reference == 100.0
    assert report.outputs['confidence'] == {'mean_abs_err': 0.0, 'p99_abs_err': 0.0, 'max_abs_err': 0.0}
    present = {k: v for k, v in report.per_class_iou.items() if v is not None}
    assert {'road', 'sky'} <= set(present) and all(v == 100.0 for v in present.values())
    assert set(report.latency_ms) == {'engine', 'reference'} and report.latency_ms['engine']['p50'] > 0
    assert report.latency_ratio_p50 > 0
    assert report.thresholds == {'min_label_agreement': 99.5, 'max_miou_delta': None}
    assert 'PASSED' in report.table() and report.engine_info['backend'] == 'tensorrt'


@pytest.mark.parametrize('precision,perturb,passed', [
    ('fp16', 0.002, True),     # 99.8 % >= 99.5 %
    ('fp16', 0.02, False),     # 98 % < 99.5 %
    ('fp32', 0.002, False),    # 99.8 % < 99.9 %
    ('int8', 0.002, True),     # a few boundary flips: mIoU vs reference within 1 point
    ('int8', 0.05, False),
])
def test_thresholds_follow_the_engine_precision(onnx_file: Path, images: Path, tmp_path: Path, precision: str,
                                                perturb: float, passed: bool) -> None:
    ep = _engine(onnx_file, tmp_path, precision)
    with _trt_backend(ep, onnx_file, precision, perturb) as eng, \
            OnnxRuntimeBackend(onnx_file, threads=1, device='cpu') as ref:
        report = compare(eng, ref, _frames(images), thresholds=Thresholds.for_precision(precision),
                         precision=precision, class_names=ref.io.class_names)
    assert report.label_agreement == pytest.approx(100 * (1 - perturb), abs=0.01)
    assert report.passed is passed, report.table()
    if not passed:
        assert report.failures and 'FAILED' in report.table()


def test_cli_exit_codes_table_and_json(onnx_file: Path, images: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ep = _engine(onnx_file, tmp_path, 'fp16')
    assert onnx_from_sidecar(engine_cache.read_sidecar(ep)) == str(onnx_file)
    perturb = {'value': 0.0}
    monkeypatch.setattr(verify_engine_cmd, 'open_engine',
                        lambda engine, precision: _trt_backend(engine, onnx_file, precision, perturb['value']))
    out = tmp_path / 'ok.json'
    # no --onnx: the reference is the ONNX the engine was built from (its sidecar's build command)
    assert main(['verify-engine', '--engine', str(ep), '--images', str(images), '--max-frames', '3',
                 '--threads', '1', '--json', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'labels agree (%)' in text and 'PASSED' in text and 'engine infer p50' in text
    doc = json.loads(out.read_text())
    assert doc['passed'] and doc['frames'] == 3 and doc['precision'] == 'fp16' and doc['reference'] == str(onnx_file)

    perturb['value'] = 0.02
    bad = tmp_path / 'bad.json'
    rc = main(['verify-engine', '--engine', str(ep), '--onnx', str(onnx_file), '--images', str(images),
               '--json', str(bad)])
    assert rc == verify_engine_cmd.EXIT_FAILED != 0
    assert 'FAILED: labels agree on 97.998% < 99.5%' in capsys.readouterr().out
    assert json.loads(bad.read_text())['passed'] is False
    # a looser stated threshold passes the same engine; the engine may come from the node's params file
    params = tmp_path / 'node.yaml'
    params.write_text('evit_segmentation:\n  ros__parameters:\n    backend:\n      type: tensorrt\n'
                      f'      engine_path: {ep}\n')
    assert main(['verify-engine', '--params-file', str(params), '--images', str(images), '--min-agreement', '97',
                 '--json', str(bad)]) == 0


def test_cli_reads_camera_frames_from_a_bag(onnx_file: Path, images: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from eval_support import write_bag
    frames = _frames(images)
    bag = write_bag(tmp_path / 'cams.mcap', [
        {'topic': '/front/image_raw', 'stamp': 10**9 + i, 'rgb': f} for i, f in enumerate(frames)] + [
        {'topic': '/rear/image_raw/compressed', 'stamp': 10**9 + i, 'rgb': f, 'compressed': 'jpeg'}
        for i, f in enumerate(frames)])
    ep = _engine(onnx_file, tmp_path, 'fp32')
    monkeypatch.setattr(verify_engine_cmd, 'open_engine',
                        lambda engine, precision: _trt_backend(engine, onnx_file, precision))
    out = tmp_path / 'bag.json'
    assert main(['verify-engine', '--engine', str(ep), '--bag', str(bag), '--image-topic', '/front/image_raw',
                 '--image-topic', '/rear/image_raw/compressed', '--json', str(out)]) == 0
    assert json.loads(out.read_text())['frames'] == 8


def test_default_thresholds_never_skip_the_check() -> None:
    assert Thresholds.for_precision('fp32') == Thresholds(99.9, None)
    assert Thresholds.for_precision('fp16') == Thresholds(99.5, None)
    assert Thresholds.for_precision('int8') == Thresholds(None, 1.0)
    assert Thresholds.for_precision('int8-qdq') == Thresholds(None, 1.0)
    assert Thresholds.for_precision('best') == Thresholds(99.5, None)
    assert Thresholds.for_precision('fp16', max_miou_delta=3.0) == Thresholds(None, 3.0)


def test_candidate_onnx_int8_against_fp32_on_the_cpu(onnx_file: Path, images: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from evit_ros.export.quantize import quantize_onnx
    int8 = quantize_onnx(onnx_file, tmp_path / 'int8.onnx', iter(_frames(images)), max_frames=4, threads=1).path
    out = tmp_path / 'cand.json'
    rc = main(['verify-engine', '--candidate-onnx', str(int8), '--onnx', str(onnx_file), '--images', str(images),
               '--max-miou-delta', '50', '--threads', '1', '--json', str(out)])
    doc = json.loads(out.read_text())
    assert rc == 0 and doc['precision'] == 'int8' and doc['frames'] == 4
    assert doc['label_agreement'] > 90 and doc['latency_ratio_p50'] > 0
    assert 'latency ratio engine / reference' in capsys.readouterr().out
    assert main(['verify-engine', '--candidate-onnx', str(int8), '--images', str(images)]) == 1


def test_cli_usage_errors(onnx_file: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['verify-engine', '--engine', str(tmp_path / 'none.engine'), '--images', str(images)]) == 1
    assert 'does not exist' in capsys.readouterr().err
    assert main(['verify-engine', '--images', str(images)]) == 1
    assert 'give --engine' in capsys.readouterr().err
    ep = _engine(onnx_file, tmp_path, 'fp16')
    assert main(['verify-engine', '--engine', str(ep), '--bag', str(tmp_path)]) == 1
    assert '--image-topic' in capsys.readouterr().err
    assert main(['verify-engine', '--engine', str(ep), '--onnx', str(tmp_path / 'x.onnx'),
                 '--images', str(images)]) == 1
    assert 'reference ONNX' in capsys.readouterr().err


def test_reference_of_another_graph_is_refused(onnx_file: Path, images: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import onnx
    model = onnx.load(str(onnx_file))
    for p in model.metadata_props:   # the same network recorded as another head: not the engine's graph
        if p.key == contract.META_HEAD:
            p.value = 'labels'
    other = tmp_path / 'other_head.onnx'
    onnx.save(model, str(other))
    assert main(['verify-engine', '--candidate-onnx', str(other), '--onnx', str(onnx_file), '--images',
                 str(images)]) == 1
    assert "pass the --onnx the engine was built from" in capsys.readouterr().err


def test_commands_are_listed_and_their_help_imports_no_runtime() -> None:
    import subprocess
    import sys
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, '-m', 'evit_ros', '--help'], cwd=repo, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and 'quantize' in proc.stdout and 'verify-engine' in proc.stdout
    script = ('import sys; from evit_ros.cli.main import main\n'
              'for cmd in ("quantize", "verify-engine"):\n'
              '    try:\n'
              '        main([cmd, "--help"])\n'
              '    except SystemExit:\n'
              '        pass\n'
              'heavy = [m for m in ("torch", "tensorrt", "onnxruntime", "onnx") if m in sys.modules]\n'
              'print("HEAVY", heavy)\n')
    proc = subprocess.run([sys.executable, '-c', script], cwd=repo, capture_output=True, text=True, timeout=60)
    assert 'HEAVY []' in proc.stdout, proc.stdout + proc.stderr
    assert '--calib-bag' in proc.stdout and '--candidate-onnx' in proc.stdout


def test_error_statistics_and_sidecar_onnx() -> None:
    from evit_ros.eval.verify_engine import _ErrorStats
    conf = _ErrorStats(256, 256.0, integer=True)
    a = np.zeros(1000, np.uint8)
    b = a.copy()
    b[:5] = 7      # 0.5 % of the pixels off by 7, one by 200
    b[5] = 200
    conf.add(a, b)
    s = conf.summary()
    assert s['max_abs_err'] == 200 and s['p99_abs_err'] == 0 and s['mean_abs_err'] == pytest.approx(0.235)
    b[:20] = 7
    conf = _ErrorStats(256, 256.0, integer=True)
    conf.add(a, b)
    assert conf.summary()['p99_abs_err'] == 7
    logits = _ErrorStats(1024, 64.0)
    logits.add(np.zeros(100, np.float32), np.full(100, 0.01, np.float32))
    # float outputs: the p99 bin's upper edge (1/16 here), never above the maximum
    assert logits.summary()['p99_abs_err'] == logits.summary()['max_abs_err'] == pytest.approx(0.01)
    assert onnx_from_sidecar({'build_command': 'evit-ros build-engine --onnx "a b.onnx" -o x.engine'}) == 'a b.onnx'
    assert onnx_from_sidecar({'build_command': 'evit-ros build-engine --onnx "unterminated'}) is None
    assert onnx_from_sidecar({}) is None
