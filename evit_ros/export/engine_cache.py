"""Engine cache: a JSON sidecar per engine, a key that pins what the engine was built for, safe writes.

An engine is only valid for the ONNX bytes, TensorRT version, GPU (name and compute capability),
precision, shapes/profiles and builder flags it was built with. :func:`cache_key` hashes exactly those;
the sidecar ``<engine>.json`` stores the key, its fields, the ONNX model metadata, the FP32-pinned layers
and the command that rebuilds the engine. :func:`check_engine` compares a sidecar with the current
machine and raises :class:`~evit_ros.errors.EngineCacheMismatch` naming the differing fields and the
exact rebuild command.

Writes go to a temporary file in the same directory, are fsynced, then ``os.replace``d, under an
exclusive ``fcntl.flock`` on ``<file>.lock``, so concurrent builders never leave a torn file.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from evit_ros.device.identity import GpuIdentity
from evit_ros.errors import EngineCacheMismatch, EngineError
from evit_ros.fileio import file_sha256, replace_atomically

SIDECAR_VERSION = 2
# Bump whenever the precision policy of evit_ros.export.tensorrt_precision changes (which layers are kept
# FP32, strongly vs weakly typed, explicit vs implicit INT8): engines and calibration caches built under
# another policy are then rebuilt instead of silently reused.
PRECISION_POLICY = 2
KEY_FIELDS: tuple[str, ...] = ('onnx_sha256', 'trt_version', 'gpu_name', 'compute_capability', 'gpu_sm_count',
                               'gpu_memory_mb', 'board', 'precision', 'precision_policy', 'pinned_layers_sha256',
                               'shapes', 'builder_flags')
def pinned_layers_sha256(layers: Sequence[str]) -> str:
    """Order-independent hash of the FP32-pinned layer names (the list itself is in the sidecar)."""
    return hashlib.sha256('\n'.join(sorted(set(layers))).encode()).hexdigest()


def key_fields(onnx_sha256: str, trt_version: str, gpu: GpuIdentity | tuple[str, str], precision: str,
               shapes: Mapping[str, Any] | Sequence[Any], builder_flags: Sequence[str], *,
               pinned_layers: Sequence[str] = (), precision_policy: int = PRECISION_POLICY) -> dict[str, Any]:
    """The normalized fields :func:`cache_key` hashes (JSON-serializable, order-independent flags)."""
    g = GpuIdentity.from_tuple(gpu)
    return {
        'onnx_sha256': str(onnx_sha256),
        'trt_version': str(trt_version),
        'gpu_name': str(g.name),
        'compute_capability': str(g.compute_capability),
        'gpu_sm_count': int(g.sm_count),
        'gpu_memory_mb': int(g.total_memory_mb),
        'board': str(g.board),
        'precision': str(precision),
        'precision_policy': int(precision_policy),
        'pinned_layers_sha256': pinned_layers_sha256(pinned_layers),
        'shapes': json.loads(json.dumps(shapes, sort_keys=True)),
        'builder_flags': sorted(str(f) for f in builder_flags),
    }


def cache_key(onnx_sha256: str, trt_version: str, gpu: GpuIdentity | tuple[str, str], precision: str,
              shapes: Mapping[str, Any] | Sequence[Any], builder_flags: Sequence[str], *,
              pinned_layers: Sequence[str] = (), precision_policy: int = PRECISION_POLICY) -> str:
    """sha256 over the canonical JSON of everything an engine depends on."""
    fields = key_fields(onnx_sha256, trt_version, gpu, precision, shapes, builder_flags,
                        pinned_layers=pinned_layers, precision_policy=precision_policy)
    return key_from_fields(fields)


def key_from_fields(fields: Mapping[str, Any]) -> str:
    missing = [k for k in KEY_FIELDS if k not in fields]
    if missing:
        raise EngineError(f'cache key fields missing: {missing}; rebuild the engine with `evit-ros build-engine`')
    canon = json.dumps({k: fields[k] for k in KEY_FIELDS}, sort_keys=True, separators=(',', ':'))
    return hashlib.sha256(canon.encode()).hexdigest()


def sidecar_path(engine_path: str | Path) -> Path:
    """``engines/x.engine`` -> ``engines/x.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + '.json')


def default_engine_path(model: str, height: int, width: int, head: str, batch: int | str, precision: str,
                        directory: str | Path = 'engines') -> Path:
    """``engines/<model>_<H>x<W>_<head>_b<N>_<precision>.engine`` (``+`` in head names becomes ``-``).

    H x W is the graph input size; ``batch`` is the static batch or ``'1-N'`` for a dynamic batch.
    """
    safe_head = head.replace('+', '-')
    return Path(directory) / f'{model}_{height}x{width}_{safe_head}_b{batch}_{precision}.engine'


def build_command(onnx_path: str | Path, engine_path: str | Path, precision: str, **options: Any) -> str:
    """The ``evit-ros build-engine`` command line that (re)builds an engine with these options."""
    args = ['evit-ros', 'build-engine', '--onnx', str(onnx_path), '--precision', precision]
    for name, value in options.items():
        if value is None or value is False:
            continue
        args.append('--' + name.replace('_', '-'))
        if value is not True:
            args.append(str(value))
    args += ['-o', str(engine_path)]
    return shlex.join(args)


def lock_path(path: str | Path) -> Path:
    """``engines/x.engine`` -> ``engines/.x.engine.lock`` (hidden; it exists only while someone holds it)."""
    p = Path(path)
    return p.with_name(f'.{p.name}.lock')


def _acquire(lock: Path, shared: bool, blocking: bool = True) -> int | None:
    """An fd holding a flock on the file now named ``lock`` (or None if not ``blocking`` and it is held).

    Lock files are removed by their last holder, so a waiter may wake up holding a file that is no
    longer there; it then retries on the new one (same inode check as in Linux's ``flock(1)`` recipes).
    """
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd
        os.close(fd)


def _release(lock: Path, fd: int) -> None:
    """Unlock, removing the lock file if nobody else holds or waits on it (exclusive try, then unlink)."""
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return       # another holder: it removes the file when it is the last one
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                os.unlink(lock)
        except FileNotFoundError:
            pass
    finally:
        os.close(fd)   # closing drops the flock


@contextlib.contextmanager
def file_lock(path: str | Path, *, shared: bool = False) -> Iterator[None]:
    """Advisory lock for ``path`` on ``.<name>.lock`` (blocks until free): exclusive for writers and builders,
    shared for readers. The lock file is removed when the last holder releases it, so none pile up."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path(p)
    fd = _acquire(lock, shared)
    if fd is None:  # pragma: no cover - blocking acquire never returns None
        raise EngineError(f'could not lock {lock}')
    try:
        yield
    finally:
        _release(lock, fd)


@contextlib.contextmanager
def build_lock(engine_path: str | Path, *, log: Any = None) -> Iterator[None]:
    """Exclusive lock for building ``engine_path``: a second builder of the same engine waits here, then
    (the caller's job) re-checks the cache and finds the engine the first one built."""
    p = Path(engine_path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path(p.with_name(p.name + '.build'))
    fd = _acquire(lock, shared=False, blocking=False)
    if fd is None:
        if log is not None:
            log.info('%s is being built by another process; waiting for it (then reusing its engine)', p)
        fd = _acquire(lock, shared=False)
        if fd is None:  # pragma: no cover
            raise EngineError(f'could not lock {lock}')
    try:
        yield
    finally:
        _release(lock, fd)


@contextlib.contextmanager
def read_lock(path: str | Path) -> Iterator[None]:
    """Shared lock for reading an engine + sidecar pair; no lock where the folder is read-only."""
    try:
        cm = file_lock(path, shared=True)
        cm.__enter__()
    except OSError:   # read-only install location: nobody can be writing there either
        yield
        return
    try:
        yield
    finally:
        cm.__exit__(None, None, None)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + ``os.replace``) under the file's lock."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(p):
        replace_atomically(p, data)


def write_engine(engine_path: str | Path, engine: bytes, sidecar: Mapping[str, Any]) -> Path:
    """Write an engine and its sidecar atomically under one lock (engine first, then the sidecar)."""
    p = Path(engine_path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(sidecar)
    doc['engine_sha256'] = hashlib.sha256(engine).hexdigest()
    doc['engine_bytes'] = len(engine)
    with file_lock(p):
        replace_atomically(p, engine)
        replace_atomically(sidecar_path(p), (json.dumps(doc, indent=2, sort_keys=True) + '\n').encode())
    return sidecar_path(p)


def make_sidecar(fields: Mapping[str, Any], *, model_metadata: Mapping[str, str], fp32_layers: Sequence[str],
                 rebuild_command: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Sidecar document (before the engine hash is added by :func:`write_engine`)."""
    doc: dict[str, Any] = {
        'version': SIDECAR_VERSION,
        'key': key_from_fields(fields),
        'fields': {k: fields[k] for k in KEY_FIELDS},
        'model_metadata': dict(model_metadata),
        'fp32_layers': list(fp32_layers),
        'build_command': rebuild_command,
    }
    doc.update(extra or {})
    return doc


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    """The sidecar of an engine; EngineCacheMismatch if missing or unreadable (with the fix)."""
    sp = sidecar_path(engine_path)
    try:
        doc = json.loads(sp.read_text())
    except FileNotFoundError as exc:
        raise EngineCacheMismatch(f'engine {engine_path} has no sidecar {sp}; rebuild it with '
                                  '`evit-ros build-engine --onnx MODEL.onnx -o ' f'{engine_path}`') from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise EngineCacheMismatch(f'sidecar {sp} is unreadable ({exc}); rebuild the engine with '
                                  '`evit-ros build-engine`') from exc
    if not isinstance(doc, dict) or 'fields' not in doc or 'key' not in doc:
        raise EngineCacheMismatch(f'sidecar {sp} lacks key/fields; rebuild the engine with `evit-ros build-engine`')
    return doc


def check_engine(engine_path: str | Path, onnx_path: str | Path | None = None, *, trt_version: str | None = None,
                 precision: str | None = None, verify_engine_hash: bool = True,
                 gpu: GpuIdentity | None = None) -> dict[str, Any]:
    """Raise EngineCacheMismatch unless the engine matches the given ONNX/TensorRT/GPU/precision.

    Fields passed as ``None`` are not checked; ``gpu`` checks name, compute capability, SM count, memory
    and board at once. Returns the sidecar document when the engine is valid. The pair is read under a
    shared lock, so a concurrent :func:`write_engine` is never seen half-done.
    """
    expected: dict[str, Any] = {'trt_version': trt_version, 'precision': precision}
    if gpu is not None:
        expected.update({'gpu_name': gpu.name, 'compute_capability': gpu.compute_capability,
                         'gpu_sm_count': gpu.sm_count, 'gpu_memory_mb': gpu.total_memory_mb, 'board': gpu.board})
    with read_lock(engine_path):
        return _check_engine(Path(engine_path), onnx_path, expected, verify_engine_hash)


def _check_engine(ep: Path, onnx_path: str | Path | None, expected: Mapping[str, Any],
                  verify_engine_hash: bool) -> dict[str, Any]:
    if not ep.is_file():
        raise EngineCacheMismatch(f'engine {ep} does not exist; build it with '
                                  f'`evit-ros build-engine --onnx {onnx_path or "MODEL.onnx"} -o {ep}`')
    doc = read_sidecar(ep)
    fields = doc['fields']
    command = doc.get('build_command') or build_command(onnx_path or 'MODEL.onnx', ep, fields.get('precision', 'fp16'))
    problems: list[str] = []
    try:
        if key_from_fields(fields) != doc['key']:
            problems.append('the sidecar key does not match its fields (edited or corrupt sidecar)')
    except EngineError as exc:
        problems.append(str(exc))
    if onnx_path is not None:
        if not Path(onnx_path).is_file():
            raise EngineCacheMismatch(f'ONNX {onnx_path} does not exist; export it first with `evit-ros export`')
        sha = file_sha256(onnx_path)
        if sha != fields.get('onnx_sha256'):
            built = str(fields.get('onnx_sha256'))[:12]
            problems.append(f'ONNX changed: {onnx_path} sha256 {sha[:12]} != built from {built}')
    if doc.get('version') != SIDECAR_VERSION or fields.get('precision_policy') != PRECISION_POLICY:
        problems.append(f'built under precision policy {fields.get("precision_policy", 1)} (sidecar version '
                        f'{doc.get("version")}); this evit_ros uses policy {PRECISION_POLICY}')
    for name, value in expected.items():
        if value is not None and str(value) != str(fields.get(name)):
            problems.append(f'{name}: engine built for {fields.get(name)!r}, this machine has {value!r}')
    if verify_engine_hash and 'engine_sha256' in doc:
        if file_sha256(ep) != doc['engine_sha256']:
            problems.append('engine file does not match the hash in its sidecar (partial or replaced file)')
    if problems:
        raise EngineCacheMismatch(f'engine {ep} cannot be used: ' + '; '.join(problems)
                                  + f'. Rebuild it with: {command}')
    return doc
