"""The engine files configure needs (an automatic ONNX export, a TensorRT build), made in a child process.

Why a module of its own: an export (seconds to a minute) or a TensorRT build (minutes on a Jetson) runs in C++
code that Python's signal handlers cannot interrupt, so a Ctrl-C during ``ros2 lifecycle set ... configure``
waited for it (3.4 s and more; launch escalates to SIGKILL at 10 s). Here the slow work runs in a spawned child
while the node's main thread waits in a loop a signal can interrupt: the signal ends the child at once (SIGKILL)
and the node keeps its 2 s shutdown promise in any state. No partial file is left: the child exports into a
private folder next to the cache (``.export-<pid>.<random>``, removed when the child is ended, and by the next
export when its node died) and moves the verified file into place with one atomic rename; a TensorRT build
writes through :func:`evit_ros.fileio.replace_atomically`, whose temporary files of an ended child are removed
under the engine's lock. The child dies with the node (``PR_SET_PDEATHSIG``) and ignores SIGINT/SIGHUP, which a
terminal sends to the whole process group: the node decides.

Only work that makes files goes to the child (an ONNX missing from the cache, an engine file missing where
``backend.onnx_path`` can build it); loading what exists stays in the node. A stale engine rebuilt by the
TensorRT backend's own check still runs in the node's process.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evit_ros.config import NodeConfig
from evit_ros.errors import CacheError, EvitError, ExportError
from evit_ros.fileio import pid_alive, remove_stale_temps
from evit_ros.ros.startup import SIGNALLED, on_exit_now

PRIVATE_PREFIX = '.export-'
POLL_S = 0.05          # how often the waiting node looks at the stop condition (a signal interrupts the wait)
_PR_SET_PDEATHSIG = 1


class ExportInterrupted(ExportError):
    """A signal ended the export/build child during configure (the node is shutting down)."""


@dataclasses.dataclass(frozen=True)
class Work:
    """What the child makes: ``kind`` 'onnx' (export into the cache) or 'engine' (TensorRT build), ``target``
    the file it produces, ``backend_type`` the resolved backend (never 'auto')."""

    kind: str
    target: Path
    backend_type: str
    checkpoint: str = ''   # the weights the node resolved (the child does not search, nor warn, again)


def pending_work(cfg: NodeConfig, head: str, max_batch: int = 1) -> Work | None:
    """The file-making part of loading ``cfg``'s backend, or None when the files exist (or none are made)."""
    from evit_ros.backends import auto_onnx_path, choose_auto, resolve_checkpoint
    b = cfg.backend
    kind = choose_auto(b)[0] if b.type == 'auto' else b.type
    if kind == 'onnxruntime' and not b.onnx_path:
        quiet = logging.getLogger('evit_ros.ros.prepare.quiet')
        quiet.disabled = True   # resolve_checkpoint's demo-weights warning comes from the load itself
        try:
            checkpoint = resolve_checkpoint(cfg.model, quiet)
            target = auto_onnx_path(cfg.model, cfg.input, head, max_batch=max_batch, checkpoint=checkpoint)
        except EvitError:
            return None   # the load reports it with its usual message
        return None if target.is_file() else Work('onnx', target, kind, checkpoint)
    if kind == 'tensorrt' and b.onnx_path and b.engine_path:
        target = Path(b.engine_path).expanduser()
        if not target.is_file():
            return Work('engine', target, kind)
        from evit_ros.backends.tensorrt_backend import TensorRTBackend
        stale = TensorRTBackend(target, onnx_path=b.onnx_path, precision=b.precision, build_if_stale=True)
        return Work('engine', target, kind) if stale.needs_build() else None   # a rebuild of minutes, too
    return None


def prepare_files(cfg: NodeConfig, logger: logging.Logger, *, head: str, max_batch: int = 1,
                  stop: Callable[[], bool] = SIGNALLED.is_set) -> None:
    """Make the files loading ``cfg``'s backend needs in a child process; return when they exist.

    Raises the child's error (e.g. :class:`~evit_ros.errors.ExportError`), or :class:`ExportInterrupted`
    when ``stop()`` became true (a signal): the child is killed and its files removed first.
    """
    work = pending_work(cfg, head, max_batch)
    if work is None:
        return
    folder = work.target.parent
    if work.kind == 'onnx':   # before the child and its slow export: a bad cache fails in ms, naming both fixes
        check_cache(folder, cfg, work, head, max_batch, logger)
    folder.mkdir(parents=True, exist_ok=True)
    private: Path | None = None
    if work.kind == 'onnx':
        remove_stale_private(folder)
        private = Path(tempfile.mkdtemp(prefix=f'{PRIVATE_PREFIX}{os.getpid()}.', dir=folder))
    ctx = multiprocessing.get_context('spawn')   # fork would copy the node's DDS and inference threads
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child_main, name='evit_ros_prepare', daemon=True,
                       args=(cfg, work, head, max_batch, str(private) if private else '', sender))

    def end() -> None:
        """Kill the child (if running) and remove what it left."""
        if proc.pid is not None and proc.exitcode is None:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.join(1.0)
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
        elif work.kind == 'engine':   # the killed builder's temporary files (every writer's that no longer runs)
            remove_stale_temps(work.target.parent)

    unregister = on_exit_now(end)
    try:
        proc.start()
        sender.close()
        what = 'exporting the ONNX' if work.kind == 'onnx' else 'building the TensorRT engine'
        logger.info('%s %s in a child process (pid %d; a signal ends it at once)', what, work.target, proc.pid)
        outcome = _wait(proc, receiver, logger, stop)
        if outcome is None:
            end()
            raise ExportInterrupted(f'{what} {work.target} was interrupted by a signal; nothing was written')
        if isinstance(outcome, CacheError) and private is not None:   # name the cache, not the private folder
            raise CacheError(str(outcome).replace(str(private / 'onnx'), str(folder)).replace(str(private),
                                                                                             str(folder.parent)))
        if isinstance(outcome, BaseException):
            raise outcome
    finally:
        unregister()
        end()
        receiver.close()


def _wait(proc: Any, receiver: Any, logger: logging.Logger, stop: Callable[[], bool]) -> Any:
    """Forward the child's log records until it reports; None when ``stop()`` became true, else True or the
    child's exception."""
    while True:
        if stop():
            return None
        try:
            ready = receiver.poll(POLL_S)
        except (EOFError, OSError):
            ready = False
        if ready:
            try:
                msg = receiver.recv()
            except (EOFError, OSError):   # the child ended without a report
                msg = None
            if msg is not None:
                if msg[0] == 'log':
                    logger.log(msg[1], '%s', msg[2])
                    continue
                return True if msg[0] == 'done' else msg[1]
        if proc.exitcode is not None and not receiver.poll(0):
            if stop():
                return None
            return ExportError(f'the export/build child process ended with exit code {proc.exitcode} without a '
                               'result (killed by the OOM killer?); see the log above, then configure again')


def remove_stale_private(folder: Path) -> None:
    """Remove private export folders whose node process is gone (it was killed during an export)."""
    for p in folder.glob(f'{PRIVATE_PREFIX}*'):
        pid_text = p.name[len(PRIVATE_PREFIX):].split('.', 1)[0]
        if not pid_text.isdigit() or not p.is_dir():
            continue
        if not pid_alive(int(pid_text)):
            shutil.rmtree(p, ignore_errors=True)


class _PipeHandler(logging.Handler):
    """The child's log records, sent to the node (which logs them through its ROS logger)."""

    def __init__(self, conn: Any) -> None:
        super().__init__()
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.conn.send(('log', record.levelno, self.format(record)))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def check_cache(folder: Path, cfg: NodeConfig, work: Work, head: str, max_batch: int,
                logger: logging.Logger) -> None:
    """The ONNX cache is writable and has room, and temporary files of killed writers are gone, before exporting
    (the same checks ``ensure_onnx`` makes in-process; the child's export sees only its private folder)."""
    from evit_ros.backends import check_onnx_cache, sweep_onnx_cache
    sweep_onnx_cache(folder, logger)
    check_onnx_cache(folder, cfg.model, cfg.input, head, checkpoint=work.checkpoint, max_batch=max_batch)


def child_main(cfg: NodeConfig, work: Work, head: str, max_batch: int, private: str, conn: Any) -> None:
    """The child: make ``work.target`` (export into ``private``, then one atomic rename), report, exit."""
    for sig in (signal.SIGINT, signal.SIGHUP):   # a terminal signals the whole group: the node decides
        signal.signal(sig, signal.SIG_IGN)
    _die_with_parent()
    lg = logging.getLogger('evit_ros.ros.prepare.child')
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    lg.addHandler(_PipeHandler(conn))
    export_log = logging.getLogger('evit_ros')   # the module loggers of the export code
    export_log.addHandler(_PipeHandler(conn))
    export_log.setLevel(logging.INFO)
    try:
        from evit_ros.backends import CACHE_ENV, create_backend
        if private:
            os.environ[CACHE_ENV] = private
        backend_cfg = dataclasses.replace(cfg.backend, type=work.backend_type)
        model = dataclasses.replace(cfg.model, checkpoint=work.checkpoint) if work.checkpoint else cfg.model
        backend = create_backend(backend_cfg, model=model, input_cfg=cfg.input, head=head, max_batch=max_batch,
                                 logger=lg)
        if work.kind == 'engine':
            backend.load()
            backend.close()
        else:
            os.replace(Path(private) / 'onnx' / work.target.name, work.target)
        conn.send(('done', None))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the node
        try:
            conn.send(('error', exc))
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            conn.send(('error', ExportError(f'{type(exc).__name__}: {exc}')))
    finally:
        conn.close()


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to this process when the node process dies (even by SIGKILL)."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):
        pass


__all__ = ['ExportInterrupted', 'PRIVATE_PREFIX', 'Work', 'child_main', 'pending_work', 'prepare_files',
           'remove_stale_private']
