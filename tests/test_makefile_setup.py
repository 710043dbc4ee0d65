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


@pytest.mark.skipif(shutil.which('make') is None, reason='needs make')
def test_compat_leg_builds_its_own_venv_exports_first_and_runs_the_listed_node_tests(tmp_path: Path) -> None:
    venv = tmp_path / 'venv-compat'
    out = subprocess.run(['make', '-n', '-C', str(REPO), f'COMPAT_VENV={venv}', 'test-compat'], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    text = '\n'.join(lines)
    assert 'tools/find_python.sh 3.10' in text and f'-m venv {venv}' in text
    upgrade = next(i for i, ln in enumerate(lines) if '--upgrade pip setuptools wheel' in ln)
    editable = next(i for i, ln in enumerate(lines) if '-e .' in ln and str(venv) in ln)
    assert upgrade < editable   # a fresh 3.10 venv's setuptools 65 cannot build the editable install
    assert '-r requirements-compat.txt' in text
    pytest_line = next(ln for ln in lines if '-m pytest' in ln)
    assert 'EVIT_ROS_TEST_ONNX_DIR=' in pytest_line and str(venv) in pytest_line
    listed = [w.rstrip(';') for w in pytest_line.split() if w.startswith('tests/')]
    assert listed and all((REPO / t).is_file() for t in listed), listed
    for needed in ('test_ros_node.py', 'test_ros_lifecycle.py', 'test_ros_vehicle.py', 'test_ros_process.py',
                   'test_ros_vehicle_process.py', 'test_ros_nav2.py', 'test_ros_params.py', 'test_ros_compat.py'):
        assert f'tests/{needed}' in listed, needed
    reqs = (REPO / 'requirements-compat.txt').read_text()
    pkgs = [ln.split('#')[0].strip() for ln in reqs.splitlines() if ln.split('#')[0].strip()]
    assert 'ros-kilted-rclpy[fastrtps]==9.1.2' in pkgs and not any('torch' in p for p in pkgs)
    ci = [ln.strip() for ln in (REPO / '.ci' / 'run').read_text().splitlines()]
    assert ci.index('make test') < ci.index('make test-compat')   # commands, not comments


def test_find_python_finds_the_version_asked_for_or_says_how_to_get_it() -> None:
    import sys
    want = f'{sys.version_info[0]}.{sys.version_info[1]}'
    ok = subprocess.run(['bash', str(REPO / 'tools' / 'find_python.sh'), want], capture_output=True, text=True,
                        env={'PATH': '/usr/bin:/bin', 'COMPAT_PYTHON': sys.executable, 'HOME': '/nonexistent'},
                        timeout=60)
    assert ok.returncode == 0, ok.stderr
    got = subprocess.run([ok.stdout.strip(), '-c', 'import sys; print(sys.version_info[:2])'], capture_output=True,
                         text=True, timeout=60).stdout.strip()
    assert got == str(sys.version_info[:2])
    missing = subprocess.run(['bash', str(REPO / 'tools' / 'find_python.sh'), '3.99'], capture_output=True, text=True,
                             env={'PATH': '/usr/bin:/bin', 'HOME': '/nonexistent'}, timeout=60)
    assert missing.returncode == 1 and missing.stdout == ''
    assert 'no working Python 3.99' in missing.stderr and 'pyenv install 3.99' in missing.stderr
