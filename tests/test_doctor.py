"""``evit-ros doctor``: the report here (ONNX Runtime usable, TensorRT not, with the reason), the exit code of the
configured backend, the engine cache key against the device, and no traceback whatever is half-installed
(a broken onnxruntime, TensorRT whose library does not load, no PyTorch, no cuda-python, and each real
cuda-python release of ``make cuda-bindings``)."""
from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
from pathlib import Path

import cuda_compat_support as compat
import doctor_support
import pytest
import trt_bindings_support
from trt_fakes import FAKE_GPU, GPU_NAME, GPU_SMS, FakeCudart, rtx

from evit_ros.backends import doctor
from evit_ros.config import load_config
from evit_ros.device import cuda_runtime, identity
from evit_ros.export import engine_cache

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *args: str, pythonpath: tuple[Path, ...] = (), prelude: str = '',
         env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / 'doctor.json'
    code = prelude + doctor_support.doctor_code(out, *args)
    path = ':'.join([*map(str, pythonpath), str(REPO)])
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=180, cwd=tmp_path,
                          env={**os.environ, 'PYTHONPATH': path, **(env or {})})
    return proc, out


def _params(tmp_path: Path, **backend: str) -> Path:
    lines = ''.join(f'      {k}: "{v}"\n' for k, v in backend.items())
    p = tmp_path / 'params.yaml'
    p.write_text(f'evit_segmentation:\n  ros__parameters:\n    backend:\n{lines}')
    return p


def test_here_onnxruntime_is_usable_and_tensorrt_is_not_with_the_reason(tmp_path: Path) -> None:
    proc, out = _run(tmp_path)
    report = doctor_support.checked_report(proc, out, exit_code=0)
    assert report['backends']['onnxruntime']['usable'] and report['config']['backend'] == 'onnxruntime'
    trt = report['backends']['tensorrt']
    assert not trt['usable'] and 'driver' in trt['reason']
    assert report['cuda']['driver_usable'] is False and 'driver' in report['cuda']['reason']
    assert report['gpu']['found'] is False and report['gpu']['reason']
    assert report['python']['numpy'] and report['python']['opencv']
    assert report['ros']['distro'] and report['ros']['rclpy']   # found without importing rclpy
    assert 'backends:' in proc.stdout and 'verdict:' in proc.stdout


def test_the_ros_facts_come_without_importing_rclpy() -> None:
    """Only the node's room imports ROS: doctor locates rclpy and reads metadata and the environment."""
    code = ('import sys\nfrom evit_ros.backends import doctor\nr = doctor.ros_info()\n'
            'assert r["rclpy_location"], r\nprint("rclpy" in sys.modules, r["rmw"])\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, 'PYTHONPATH': str(REPO), 'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['False', 'rmw_cyclonedds_cpp']


def test_configured_tensorrt_without_an_engine_exits_3(tmp_path: Path) -> None:
    params = _params(tmp_path, type='tensorrt', engine_path=str(tmp_path / 'missing.engine'), precision='fp16')
    proc, out = _run(tmp_path, '--params-file', str(params))
    report = doctor_support.checked_report(proc, out, exit_code=3)
    engine = report['engines'][0]
    assert engine['role'] == 'engine' and engine['exists'] is False and engine['cache_key_matches'] is False
    assert 'not usable' in report['verdict']['reason']


@pytest.mark.skipif(rtx is None, reason='needs TensorRT-RTX (requirements-dev) to stand for an installed TensorRT')
def test_engine_cache_key_is_checked_against_this_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a (fake) GPU, an engine built for it matches; one built for another GPU does not, and exits 3."""
    monkeypatch.setattr(cuda_runtime, 'cudart', FakeCudart())
    gpu = FAKE_GPU
    ep = tmp_path / 'm.engine'
    for name, usable_here in ((GPU_NAME, True), ('Other GPU', False)):
        built_for = identity.GpuIdentity(name, gpu.compute_capability, gpu.sm_count, gpu.total_memory_mb, gpu.board)
        fields = engine_cache.key_fields('0' * 64, str(rtx.__version__), built_for, 'fp32', {}, [])
        engine_cache.write_engine(ep, b'engine bytes', engine_cache.make_sidecar(
            fields, model_metadata={}, fp32_layers=[], rebuild_command='evit-ros build-engine ...'))
        cfg = load_config(_params(tmp_path, type='tensorrt', engine_path=str(ep), precision='fp32'))
        report = doctor.collect(cfg)
        json.dumps(report)   # JSON-ready
        entry = report['engines'][0]
        assert report['backends']['tensorrt']['usable'], report['backends']['tensorrt']
        assert entry['cache_key_matches'] is usable_here, entry
        assert report['verdict']['usable'] is usable_here
        assert entry['built_for']['gpu_name'] == name
        if not usable_here:
            assert "gpu_name: engine built for 'Other GPU'" in entry['reason']
    assert report['gpu']['name'] == GPU_NAME and report['gpu']['sm_count'] == GPU_SMS


def test_auto_still_shows_the_configured_engine_it_does_not_use(tmp_path: Path) -> None:
    cfg = load_config(_params(tmp_path, type='auto', engine_path=str(tmp_path / 'b0.engine')))
    report = doctor.collect(cfg)
    assert report['config']['backend'] == 'onnxruntime' and report['verdict']['usable']
    engine = report['engines'][0]
    assert engine['role'] == 'engine' and engine['used'] is False and engine['exists'] is False


def test_cuda_python_newer_than_the_driver_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda-python of the wrong major: a CUDA 13 runtime on a CUDA 12.6 driver says which release to install."""
    class Cuda13On126(FakeCudart):
        def cudaGetDeviceCount(self):  # noqa: N802
            return (self.cudaError_t.cudaErrorInsufficientDriver, 0)

        def cudaRuntimeGetVersion(self):  # noqa: N802
            return self._ok(13000)

        def cudaDriverGetVersion(self):  # noqa: N802
            return self._ok(12060)

    # the fake's error codes plus the driver error
    codes = {**{m.name: m.value for m in FakeCudart.cudaError_t}, 'cudaErrorInsufficientDriver': 35}
    errors = enum.IntEnum('cudaError_t', codes)
    monkeypatch.setattr(Cuda13On126, 'cudaError_t', errors)
    monkeypatch.setattr(cuda_runtime, 'cudart', Cuda13On126())
    info = doctor.cuda_info()
    assert info['devices'] == 0 and info['runtime_version'] == '13.0' and info['driver_version'] == '12.6'
    assert 'built for CUDA 13.0 but the driver supports CUDA 12.6: install cuda-python 12.x' in info['reason']


def _stub(root: Path, name: str, body: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / '__init__.py').write_text(body)
    return root


_BLOCK = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError(name + ' is blocked')
        return None
sys.meta_path.insert(0, _Block())
"""


def test_broken_onnxruntime_and_unloadable_tensorrt_are_reported_not_raised(tmp_path: Path) -> None:
    stubs = _stub(tmp_path / 'stubs', 'onnxruntime', "raise RuntimeError('onnxruntime wheel built for another "
                                                     "numpy')\n")
    _stub(stubs, 'tensorrt', "raise OSError('libnvinfer.so.10: cannot open shared object file')\n")
    proc, out = _run(tmp_path, pythonpath=(stubs,))
    report = doctor_support.checked_report(proc, out, exit_code=0)   # auto falls back to torch
    assert not report['backends']['onnxruntime']['usable']
    assert 'another numpy' in report['backends']['onnxruntime']['reason']
    assert 'libnvinfer' in report['tensorrt']['error'] and 'libnvinfer' in report['backends']['tensorrt']['reason']
    assert report['config']['backend'] == 'torch'


def test_no_torch_no_cuda_python_and_no_exported_onnx_exits_3(tmp_path: Path) -> None:
    """A vehicle without PyTorch whose ONNX was never exported: auto picks ONNX Runtime, which has no graph."""
    proc, out = _run(tmp_path, prelude=_BLOCK.format(blocked={'torch', 'cuda'}),
                     env={'EVIT_ROS_CACHE': str(tmp_path / 'empty_cache')})
    report = doctor_support.checked_report(proc, out, exit_code=3)
    assert report['torch']['installed'] is False
    assert report['cuda']['cuda_python'] is None and 'cuda-python is not installed' in report['cuda']['reason']
    assert 'PyTorch is missing' in report['verdict']['reason'] and 'backend.onnx_path' in report['verdict']['reason']


@pytest.mark.parametrize('version', compat.versions())
def test_doctor_under_each_real_cuda_python(tmp_path: Path, version: str) -> None:
    out = tmp_path / 'doctor.json'
    proc = compat.run_under(version, doctor_support.doctor_code(out), timeout=180)
    report = doctor_support.checked_report(proc, out, exit_code=0)
    cuda = report['cuda']
    assert cuda['cuda_python'] == version and cuda['driver_usable'] is False and 'driver' in cuda['reason']
    assert cuda['module'] == ('cuda.cudart' if version.startswith('12.2') else 'cuda.bindings.runtime')
    assert not report['backends']['tensorrt']['usable'] and 'driver' in report['backends']['tensorrt']['reason']


# each TensorRT release of `make trt-bindings` with the cuda-python of the JetPack that ships it
TRT_WITH_CUDA = {'8.6.1': '12.2.1', '10.3.0': '12.6.2.post1', '10.13.3.9': '13.0.3', '11.4.0.106': '13.4.4'}


@pytest.mark.parametrize('trt_version,major', [(v, m) for v, _req, m in trt_bindings_support.versions()])
def test_doctor_under_each_real_tensorrt_release(tmp_path: Path, trt_version: str, major: int) -> None:
    """The real bindings (stub libnvinfer, no GPU) with a real cuda-python: TensorRT imports, its build path is
    named, and the backend is unusable with the driver as the reason, without a traceback."""
    if not (trt_bindings_support.bindings_dir(trt_version) / 'tensorrt_bindings').is_dir():
        pytest.fail(f'run `make trt-bindings`: {trt_bindings_support.bindings_dir(trt_version)} is missing')
    env = trt_bindings_support.bindings_env(trt_version, trt_bindings_support.build_stub_libs(tmp_path / 'stub',
                                                                                             major))
    cuda = TRT_WITH_CUDA.get(trt_version, compat.versions()[-1])
    out = tmp_path / 'doctor.json'
    proc = compat.run_under(cuda, doctor_support.doctor_code(out), timeout=180,
                            env={k: env[k] for k in ('LD_LIBRARY_PATH', 'EVIT_TRT_REAL_VERSION')} |
                            {'PYTHONPATH': env['PYTHONPATH']})
    report = doctor_support.checked_report(proc, out, exit_code=0)
    trt = report['tensorrt']
    assert trt['installed'] and trt['module'] == 'tensorrt_bindings' and trt['version'] == trt_version, trt
    assert trt['strong_typing'] == {8: 'never', 10: 'flag', 11: 'always'}[major]
    assert trt['implicit_int8'] is (major == 8) and 'fp16' in trt['build_paths']
    assert report['cuda']['cuda_python'] == cuda
    assert not report['backends']['tensorrt']['usable'] and 'driver' in report['backends']['tensorrt']['reason']



def test_the_auto_onnx_is_the_nodes_for_several_cameras_and_found_without_torch(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    """A two-camera node exports 1..2 frames per run (the cache name says _b1-2): doctor looks for that file, and
    naming it needs the checkpoint's hash only, not PyTorch."""
    from evit_ros.backends import auto_onnx_path, node_auto_batch
    from evit_ros.contract import NODE_HEAD
    ckpt = tmp_path / 'b0.pt'
    ckpt.write_bytes(b'not read as weights here, only hashed')
    cache = tmp_path / 'cache'
    params = tmp_path / 'params.yaml'
    params.write_text('evit_segmentation:\n  ros__parameters:\n    cameras: [front, rear]\n'
                      f'    model:\n      checkpoint: "{ckpt}"\n    backend:\n      type: onnxruntime\n')
    cfg = load_config(str(params))
    monkeypatch.setenv('EVIT_ROS_CACHE', str(cache))
    node_onnx = auto_onnx_path(cfg.model, cfg.input, NODE_HEAD, checkpoint=str(ckpt),
                               max_batch=node_auto_batch(len(cfg.cameras)))
    assert '_b1-2_' in node_onnx.name, node_onnx
    node_onnx.parent.mkdir(parents=True)
    node_onnx.write_bytes(b'')
    proc, out = _run(tmp_path, '--params-file', str(params), prelude=_BLOCK.format(blocked={'torch'}),
                     env={'EVIT_ROS_CACHE': str(cache)})
    report = doctor_support.checked_report(proc, out)
    entry = next(e for e in report['engines'] if e['role'] == 'auto-onnx')
    assert entry['path'] == str(node_onnx) and entry['exists'] is True, entry
