"""Atomic writes keep the permissions a plain open() would give (engines shared between users)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from evit_ros.fileio import replace_atomically

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('umask,mode', [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_replace_atomically_honours_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """Run in a child process: the umask is process-wide and pytest may run threads."""
    target = tmp_path / 'x.engine'
    code = ('import os, sys; from pathlib import Path; from evit_ros.fileio import replace_atomically; '
            f'os.umask({umask}); replace_atomically(Path(sys.argv[1]), b"abc"); '
            'replace_atomically(Path(sys.argv[1]), b"abcd")')
    subprocess.run([sys.executable, '-c', code, str(target)], check=True, cwd=REPO, timeout=60,
                   env={**os.environ, 'PYTHONPATH': str(REPO)})
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert target.read_bytes() == b'abcd'
    assert [p.name for p in tmp_path.iterdir()] == ['x.engine']   # no temp file left behind


def test_replace_atomically_in_this_process(tmp_path: Path) -> None:
    old = os.umask(0o022)
    os.umask(old)
    target = tmp_path / 'y.json'
    replace_atomically(target, b'{}')
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~old
