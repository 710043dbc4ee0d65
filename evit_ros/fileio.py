"""Crash-safe file writes and content hashes, shared by checkpoints, exports and the engine cache.

A write goes to ``.<name>.<pid>@<pidns>.<random>.tmp`` beside the target; a writer killed before its
``os.replace`` (SIGKILL, power loss) leaves that file behind, and the next write into the folder (and each
node start, for the ONNX cache) removes the temporary files of writers that are no longer running
(:func:`remove_stale_temps`), never a live writer's. ``<pidns>`` is the writer's PID namespace: a pid can
only be checked in its own namespace, so a file written from another container sharing the folder is
removed only once it is an hour old.
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

# a temp file whose writer cannot be checked (another PID namespace, or a release before the pid was in the
# name: .<name>.<random>.tmp) is removed once it is this old: no writer takes an hour over one file
FOREIGN_TEMP_MIN_AGE_S = 3600.0
_TEMP = re.compile(r'^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<ns>\d+)\.[a-z0-9_]{8}\.tmp$')
_LEGACY_TEMP = re.compile(r'^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$')


def pid_namespace() -> int:
    """The inode of this process's PID namespace (Linux), or 0 where there is none to read."""
    try:
        return os.stat('/proc/self/ns/pid').st_ino
    except OSError:
        return 0


def temp_prefix(name: str) -> str:
    """``.<name>.<pid>@<pidns>.``: the prefix of this process's temporary files for ``name``."""
    return f'.{name}.{os.getpid()}@{pid_namespace()}.'


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
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix='.tmp', dir=str(path.parent))
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


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs in this PID namespace (this process included); another user's live
    process counts as running. What every stale-file sweep asks before removing a writer's leftovers."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # EPERM: another user's live process
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike[str], *,
                       foreign_min_age_s: float = FOREIGN_TEMP_MIN_AGE_S) -> list[Path]:
    """Remove the temporary files of writers that no longer run; returns what went.

    A file of this PID namespace goes as soon as its pid is not a running process (a live writer's file is
    never touched); one of another namespace, or of a release without the pid in the name, once it was last
    written ``foreign_min_age_s`` ago. Unreadable folders and files removed concurrently are skipped.
    """
    removed: list[Path] = []
    now, ours = time.time(), pid_namespace()
    try:
        entries = list(os.scandir(os.fspath(folder)))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is not None and int(m['ns']) == ours:
            if pid_alive(int(m['pid'])):
                continue
            age = 0.0
        elif m is not None or _LEGACY_TEMP.match(entry.name):
            age = foreign_min_age_s
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
    fd, probe = tempfile.mkstemp(prefix=temp_prefix('write-probe'), suffix='.tmp', dir=str(d))
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
