"""Crash-safe file writes and content hashes, shared by checkpoints, exports and the engine cache.

A write goes to ``.<name>.<pid>.<random>.tmp`` beside the target; a writer killed before its ``os.replace``
(SIGKILL, power loss) leaves that file behind, and the next write into the folder removes the temporary
files of writers that are no longer running (:func:`remove_stale_temps`), never a live writer's.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

# a temp file whose writer's pid is gone is removed only when it is also this old: a writer in another PID
# namespace (a container sharing the cache folder) looks dead from here but writes its file within seconds
STALE_TEMP_MIN_AGE_S = 60.0
_TEMP = re.compile(r'^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp$')
# releases before the pid was in the name wrote .<name>.<random>.tmp: no writer takes an hour over one file
_LEGACY_TEMP = re.compile(r'^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$')
LEGACY_TEMP_MIN_AGE_S = 3600.0


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints and engines can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    """The process umask: from /proc (Linux >= 4.7, no side effect), else set and put back (racy with threads)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def replace_atomically(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, ``os.replace``: readers see the old file or the new, never a part.

    The file gets the mode a plain ``open()`` would give (0644 under umask 022), not mkstemp's 0600: an
    engine built by one user (or by sudo) must stay readable by the node running as another.
    """
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.{os.getpid()}.', suffix='.tmp', dir=str(path.parent))
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's live process
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike[str], *, min_age_s: float = STALE_TEMP_MIN_AGE_S) -> list[Path]:
    """Remove the ``.<name>.<pid>.<random>.tmp`` files of writers that no longer run; returns what went.

    A file is stale when its pid is not a running process and it was last written ``min_age_s`` ago or more
    (a live writer's file is never touched). Unreadable folders and files removed concurrently are skipped.
    """
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(os.fspath(folder)))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is not None:
            if _pid_alive(int(m['pid'])):
                continue
            age = min_age_s
        elif _LEGACY_TEMP.match(entry.name):
            age = max(min_age_s, LEGACY_TEMP_MIN_AGE_S)
        else:
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or now - entry.stat(follow_symlinks=False).st_mtime < age:
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def check_writable(folder: str | os.PathLike, need_bytes: int = 0) -> None:
    """OSError unless ``folder`` can be created, written and holds ``need_bytes`` more (checked before slow work).

    Writes, fsyncs and removes a small probe file, so a read-only mount, a file in the folder's place and a
    full disk all fail here with their errno (EROFS/EACCES, ENOTDIR/EEXIST, ENOSPC).
    """
    d = Path(folder)
    if d.exists() and not d.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(d))
    d.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=f'.write-probe.{os.getpid()}.', suffix='.tmp', dir=str(d))
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(b'evit_ros write probe\n')
            f.flush()
            os.fsync(f.fileno())
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)
    free = shutil.disk_usage(d).free
    if free < need_bytes:
        raise OSError(errno.ENOSPC, f'{free / 1e6:.1f} MB free, about {need_bytes / 1e6:.1f} MB needed', str(d))


def os_error_text(exc: OSError) -> str:
    """An OSError in an operator's words with its errno name (and the free/needed space of a full disk)."""
    code = exc.errno or 0
    text = {errno.ENOSPC: 'no space left on device', errno.EDQUOT: 'disk quota exceeded',
            errno.EROFS: 'read-only file system', errno.EACCES: 'permission denied',
            errno.EPERM: 'operation not permitted', errno.ENOTDIR: 'a file is in the place of a folder',
            errno.EEXIST: 'a file is in the place of a folder'}.get(code, exc.strerror or str(exc))
    own = exc.strerror if exc.strerror and code and exc.strerror != os.strerror(code) else ''
    return f'{text} ({errno.errorcode.get(code, type(exc).__name__)}{", " + own if own else ""})'
