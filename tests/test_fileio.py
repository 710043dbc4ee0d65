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


# --------------------------------------------------------------------------------------------------------------
# temporary files of killed writers

_BLOCKED_WRITER = '''
import os, sys, time
from pathlib import Path
from evit_ros import fileio
os.fsync = lambda fd: (print('writing', flush=True), time.sleep(600))   # stuck mid-write, like a long export
fileio.replace_atomically(Path(sys.argv[1]), b'x' * 100000)
'''


def _start_blocked_writer(target: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, '-c', _BLOCKED_WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, 'PYTHONPATH': str(Path(__file__).resolve().parents[1])})
    assert proc.stdout is not None and proc.stdout.readline() == 'writing\n'
    return proc


def test_a_killed_writers_temp_file_is_removed_and_a_live_writers_kept(tmp_path: Path) -> None:
    """SIGKILL during an export left .<name>.onnx.<random>.tmp forever, one more per crash."""
    from evit_ros.fileio import pid_namespace, remove_stale_temps
    target = tmp_path / 'model.onnx'
    live = _start_blocked_writer(target)
    killed = _start_blocked_writer(tmp_path / 'other.onnx')
    try:
        ns = pid_namespace()
        (alive,) = tmp_path.glob(f'.model.onnx.{live.pid}@{ns}.*.tmp')   # the writer's pid is in the name
        (dead,) = tmp_path.glob(f'.other.onnx.{killed.pid}@{ns}.*.tmp')
        assert alive.stat().st_size == dead.stat().st_size == 100000
        old = alive.stat().st_mtime - 7200
        os.utime(alive, (old, old))     # however old: its writer runs, so it stays
        killed.kill()
        killed.wait()
        # the next write into the folder clears the dead writer's file at once, never the live one's
        replace_atomically(tmp_path / 'sidecar.json', b'{}')
        assert not dead.exists() and alive.exists()
        assert (tmp_path / 'sidecar.json').read_bytes() == b'{}'
    finally:
        for p in (live, killed):
            if p.poll() is None:
                p.kill()
            p.wait()
    assert remove_stale_temps(tmp_path) == [alive]   # its writer is gone now too
    assert sorted(p.name for p in tmp_path.iterdir()) == ['sidecar.json']


def test_temp_files_whose_writer_cannot_be_checked_go_after_an_hour(tmp_path: Path) -> None:
    """Another PID namespace (a container sharing the cache) or a release without the pid in the name."""
    from evit_ros.fileio import pid_namespace, remove_stale_temps
    foreign = tmp_path / f'.model.onnx.1@{pid_namespace() + 1}.k3j_9x0a.tmp'
    legacy = tmp_path / '.model.onnx.k3j_9x0a.tmp'
    other = tmp_path / '.notes.txt'
    for p in (foreign, legacy, other):
        p.write_bytes(b'x')
    assert remove_stale_temps(tmp_path) == []
    for p in (foreign, legacy, other):
        os.utime(p, (1, 1))
    assert sorted(remove_stale_temps(tmp_path)) == sorted([foreign, legacy]) and other.exists()


def test_check_writable_names_what_is_wrong(tmp_path: Path) -> None:
    import errno

    from evit_ros.fileio import check_writable
    check_writable(tmp_path / 'new' / 'onnx')
    assert (tmp_path / 'new' / 'onnx').is_dir() and not list((tmp_path / 'new' / 'onnx').iterdir())
    (tmp_path / 'file').write_text('x')
    with pytest.raises(NotADirectoryError):
        check_writable(tmp_path / 'file')
    with pytest.raises(NotADirectoryError):
        check_writable(tmp_path / 'file' / 'onnx')
    with pytest.raises(OSError, match='MB needed') as info:
        check_writable(tmp_path, need_bytes=1 << 62)
    assert info.value.errno == errno.ENOSPC
