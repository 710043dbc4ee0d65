"""``tools/gpu_check.sh``, the prepared GPU check: its CPU path end to end here, and its CUDA part's logic on the fake
GPU of ``tests/trt_fakes.py`` (the real run needs a CUDA machine; docs/development.md says how)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trt_fakes import FakeCudart

from evit_ros.device import cuda_runtime

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'tools' / 'gpu_check.sh'


def _module():
    spec = importlib.util.spec_from_file_location('gpu_check', REPO / 'tools' / 'gpu_check.py')
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_script_is_valid_bash() -> None:
    out = subprocess.run(['bash', '-n', str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def test_dry_run_on_this_cpu_machine(tmp_path: Path) -> None:
    """CPU, 32x64, one frame: the CUDA part records the BackendErrors of a GPU-less machine, the torch part agrees
    with ONNX Runtime, doctor writes its report, and everything lands in $OUT."""
    env = {**os.environ, 'OUT': str(tmp_path), 'PYTHON': sys.executable, 'EVIT_ROS_CACHE': str(tmp_path / 'cache')}
    proc = subprocess.run(['bash', str(SCRIPT), '--dry-run', '--frames', '1', '--height', '32', '--width', '64'],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert res['dry_run'] and res['cuda']['devices'] == 0
    assert all(v.startswith('BackendError') and 'driver' in v for v in res['cuda']['errors_without_gpu'].values())
    torch_part = res['torch']
    assert torch_part['ok'] and torch_part['reference'] == 'onnxruntime-cpu'
    assert torch_part['modes']['fp32']['label_agreement_pct'] >= 99.0 and torch_part['modes']['fp32']['finite']
    doctor = json.loads((tmp_path / 'doctor.json').read_text())
    assert doctor['verdict']['usable'] and 'Traceback' not in proc.stdout + proc.stderr
    assert (tmp_path / 'gpu_check.log').is_file()


def test_the_cuda_part_on_the_fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU path of the CUDA check (copies, events, a captured graph of copies replayed on new data, a failing
    allocation) on the fake, which copies for real through the addresses it hands out."""
    fake = FakeCudart()
    monkeypatch.setattr(cuda_runtime, 'cudart', fake)
    out = _module().check_cuda(1 << 16, 3)
    assert out['ok'] and out['roundtrip_equal'] and out['graph_replays_equal'], out
    assert out['huge_alloc'].startswith('BackendError: CUDA cudaMalloc') and 'Fake Orin' in out['gpu']
    assert fake.launches == 3 and fake.graphs_destroyed == 1
    assert fake.live('device') == 0 and fake.live('pinned') == 0 and not fake.streams and not fake.events
