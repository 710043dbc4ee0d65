"""Run Python code under one real cuda-python release from ``.compat/cuda-python-<version>/``.

``make cuda-bindings`` installs each release of ``tools/cuda_python_versions.txt`` there (pip --target). A
child interpreter imports ``cuda`` from that folder only: the venv's own cuda-python (a namespace package,
plus a ``.pth`` redirector that imports ``cuda`` at start-up) must not leak in. :func:`run_under` is the hook
other tests use (e.g. ``evit-ros doctor`` under each release).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VERSIONS_FILE = REPO / 'tools' / 'cuda_python_versions.txt'
COMPAT = REPO / '.compat'
OPTIONAL_ENV = 'EVIT_CUDA_BINDINGS'   # 'optional': skip (not fail) when `make cuda-bindings` has not run


def versions() -> list[str]:
    """The cuda-python releases CI tests, oldest first."""
    lines = (ln.split() for ln in VERSIONS_FILE.read_text().splitlines() if ln.strip() and not ln.startswith('#'))
    return [parts[0] for parts in lines]


def target(version: str) -> Path:
    """The folder of one release; a test FAILS (never skips) when it is missing, naming the command."""
    path = COMPAT / f'cuda-python-{version}'
    if not (path / '.installed').is_file():
        msg = f'{path} is missing: run `make cuda-bindings` (make test runs it; or set {OPTIONAL_ENV}=optional to skip)'
        if os.environ.get(OPTIONAL_ENV) == 'optional':
            pytest.skip(msg)
        pytest.fail(msg)
    return path


def bootstrap(version: str) -> str:
    """Python source that makes ``import cuda`` resolve inside the release's folder only."""
    root = str(target(version))
    return f"""
import sys
sys.path.insert(0, {root!r})
for _m in [m for m in sys.modules if m == 'cuda' or m.startswith('cuda.')]:
    del sys.modules[_m]
import cuda
cuda.__path__ = [{root + '/cuda'!r}]
"""


def run_under(version: str, code: str, *args: str, timeout: float = 120,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter that sees cuda-python ``version`` (and this checkout's evit_ros)."""
    script = bootstrap(version) + f'sys.path.insert(1, {str(REPO)!r})\n' + code
    full_env = {**os.environ, 'PYTHONPATH': str(REPO), **(env or {})}
    return subprocess.run([sys.executable, '-c', script, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=full_env)
