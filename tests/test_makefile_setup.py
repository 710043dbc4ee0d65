"""First-run setup (`make venv`, run by `make demo`/`make test`) announces each step and installs evit_ros editable."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which('make') is None, reason='needs make')
def test_first_run_announces_each_step_before_running_it(tmp_path: Path) -> None:
    # dry run against a venv path that does not exist: exactly what a fresh clone's first `make demo` runs
    out = subprocess.run(['make', '-n', '-C', str(REPO), f'VENV={tmp_path / "venv"}', 'venv'], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    steps = [i for i, ln in enumerate(lines) if ln.startswith('echo "[setup ')]
    assert len(steps) >= 4, out.stdout
    installs = [i for i, ln in enumerate(lines) if 'pip install' in ln]
    assert installs and all(any(s < i for s in steps) for i in installs)
    req = next(ln for ln in lines if '-r requirements-dev.txt' in ln)
    assert '--quiet' not in req and "grep --line-buffered -E '^(Collecting" in ''.join(lines)   # pip's own progress
    assert any('install' in ln and '-e .' in ln and '--no-deps' in ln for ln in lines)   # evit-ros on the venv PATH


@pytest.mark.skipif(shutil.which('make') is None, reason='needs make')
def test_make_test_installs_the_real_tensorrt_bindings_before_pytest(tmp_path: Path) -> None:
    """CI (`make test` in a clean clone) must run tests/test_trt_bindings.py for real, not skip it."""
    out = subprocess.run(['make', '-n', '-B', '-C', str(REPO), f'VENV={tmp_path / "venv"}', 'test'],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    install = next(i for i, ln in enumerate(lines) if 'tools/install_trt_bindings.sh' in ln)
    pytest_run = next(i for i, ln in enumerate(lines) if '-m pytest -q' in ln and ' tests;' in ln)
    assert install < pytest_run and '.compat' in lines[install]
    # and the real cuda-python releases of tests/test_cuda_python_versions.py
    cuda = next(i for i, ln in enumerate(lines) if 'tools/install_cuda_bindings.sh' in ln)
    assert cuda < pytest_run and '.compat' in lines[cuda]
