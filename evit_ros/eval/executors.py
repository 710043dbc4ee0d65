"""Where shards run: in this process, in local worker processes (``--jobs``), or on Ray actors across a cluster.

One driver loop (:func:`execute`) serves every executor: it schedules shards onto long-lived workers (each
builds the node's pipeline, and so loads its model or TensorRT engine, once), retries a failed shard up to
``--max-retries`` times (a lost worker process or Ray actor counts as a failure of the shard it was running;
Ray restarts the actor), lists shards that still fail with their error, shows progress over all shards, and
on Ctrl-C cancels what is left and returns the finished part. Results are merged by :func:`merge_results`
in plan order, so every executor gives the same report.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evit_ros.errors import ConfigError, DataError, EvitError
from evit_ros.eval.scoring import EvalSpec, EvalState
from evit_ros.eval.shards import (
    ResultMerger,
    Shard,
    ShardFailure,
    ShardPlan,
    ShardResult,
    one_line,
    run_shard,
    shard_spec,
)

LOG = logging.getLogger('evit_ros.eval')
EXECUTORS = ('local', 'ray')
RAY_INSTALL_HINT = ("--executor ray needs Ray on the driver and every worker: pip install 'ray>=2.10' "
                    "(or pip install '.[ray]' from an evit_ros checkout)")


@dataclass(frozen=True)
class ExecutionOptions:
    """How shards are run (``evit-ros eval --executor ...``)."""

    executor: str = 'local'
    jobs: int = 0               # workers; 0: local 1, ray: as many as the cluster's resources fit
    ray_address: str = ''       # '' : $RAY_ADDRESS, else a local cluster started for this run
    shard_seconds: float = 0.0  # 0: one shard per bag
    max_retries: int = 2
    task_cpus: float = 1.0
    task_gpus: float = 0.0
    progress: bool = True
    ray_timeout: float = 30.0   # seconds to connect to a Ray cluster (--ray-address) before the run ends with one line

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(f'--executor {self.executor!r} is not valid; use local or ray')
        if self.jobs < 0 or self.max_retries < 0:
            raise ConfigError(f'--jobs {self.jobs} and --max-retries {self.max_retries} must be >= 0')
        for flag, value in (('--task-cpus', self.task_cpus), ('--task-gpus', self.task_gpus),
                            ('--shard-seconds', self.shard_seconds), ('--ray-timeout', self.ray_timeout)):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f'{flag} {value} is not a finite number; give a number such as 1 or 0.5')
        if self.task_cpus <= 0 or self.task_gpus < 0:
            raise ConfigError(f'--task-cpus {self.task_cpus} must be > 0 and --task-gpus {self.task_gpus} >= 0')
        if self.shard_seconds < 0:
            raise ConfigError(f'--shard-seconds {self.shard_seconds} must be >= 0 (0: one shard per bag)')
        if self.ray_timeout <= 0:
            raise ConfigError(f'--ray-timeout {self.ray_timeout} must be > 0 seconds (default 30)')
        if self.executor == 'local' and (self.ray_address or self.task_gpus):
            raise ConfigError('--ray-address and --task-gpus need --executor ray')


class WorkerSetupError(ConfigError):
    """A worker could not build the pipeline (model, engine, backend): every worker would fail the same way."""


class _ShardError(Exception):
    pass


# -- what a worker runs ------------------------------------------------------------------------------------

class ShardWorker:
    """A long-lived worker: builds the pipeline on its first shard and reuses it for every later one."""

    def __init__(self, spec: EvalSpec, factory: Callable[[], Any], num_classes: int) -> None:
        self.spec, self.factory, self.num_classes = shard_spec(spec), factory, num_classes
        self.segmenter: Any = None

    def run(self, shard: Shard, out_part: str, progress: Callable[[int], None] | None = None) -> tuple[str, Any]:
        """('ok', ShardResult) | ('setup' | 'bad-data' | 'error', message): plain values that pickle anywhere."""
        if self.segmenter is None:
            try:
                self.segmenter = self.factory()
            except Exception as exc:  # noqa: BLE001 - reported to the driver with its message
                return 'setup', f'{type(exc).__name__}: {exc}'
        try:
            return 'ok', run_shard(shard, self.spec, self.segmenter, self.num_classes, out_part=out_part,
                                   progress=progress)
        except DataError as exc:   # the bag itself is bad (truncated, corrupt, a topic missing): retrying cannot help
            return 'bad-data', str(exc)
        except EvitError as exc:
            return 'error', f'{type(exc).__name__}: {exc}'
        except Exception as exc:  # noqa: BLE001 - any failure of one shard is that shard's, retried by the driver
            tb = traceback.extract_tb(exc.__traceback__)[-1:]
            where = f' at {Path(tb[0].filename).name}:{tb[0].lineno}' if tb else ''
            return 'error', f'{type(exc).__name__}: {exc}{where}'

    def close(self) -> None:
        backend = getattr(self.segmenter, 'backend', None)
        if backend is not None and hasattr(backend, 'close'):
            backend.close()
        self.segmenter = None


# -- executors -------------------------------------------------------------------------------------------

class _InlineExecutor:
    """``--jobs 1``: shards run one after another in this process (Ctrl-C keeps the running shard's part)."""

    def __init__(self, spec: EvalSpec, factory: Callable[[], Any], num_classes: int) -> None:
        self.worker = ShardWorker(spec, factory, num_classes)
        self.workers = 1
        self._queue: list[tuple[int, Shard, str]] = []
        self._done: dict[int, tuple[str, Any]] = {}
        self._frames: dict[int, int] = {}
        self._next = 0

    def free(self, running: int) -> int:
        return 0 if self._queue else 1

    def submit(self, shard: Shard, out_part: str) -> int:
        self._next += 1
        self._queue.append((self._next, shard, out_part))
        return self._next

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        if not self._queue:
            return []
        h, shard, out_part = self._queue.pop(0)
        self._done[h] = self.worker.run(shard, out_part, lambda n: self._frames.__setitem__(shard.index, n))
        return [h]

    def result(self, handle: Any) -> tuple[str, Any]:
        return self._done.pop(handle)

    def frames(self) -> dict[int, int]:
        return dict(self._frames)

    def cancel(self) -> None:
        self._queue.clear()

    def close(self) -> None:
        self.worker.close()


_POOL_WORKER: ShardWorker | None = None
_POOL_QUEUE: Any = None


def _pool_init(spec: EvalSpec, factory: Callable[[], Any], num_classes: int, queue: Any) -> None:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the driver decides what an interrupt means
    global _POOL_WORKER, _POOL_QUEUE
    _POOL_WORKER = ShardWorker(spec, factory, num_classes)
    _POOL_QUEUE = queue


def _pool_run(shard: Shard, out_part: str) -> tuple[str, Any]:
    if _POOL_WORKER is None:
        raise RuntimeError('worker process not initialized')
    q = _POOL_QUEUE
    return _POOL_WORKER.run(shard, out_part, (lambda n: q.put((shard.index, n))) if q is not None else None)


class _ProcessExecutor:
    """``--jobs N``: N spawned processes, each a long-lived ShardWorker; a crashed process is replaced."""

    def __init__(self, spec: EvalSpec, factory: Callable[[], Any], num_classes: int, jobs: int) -> None:
        import multiprocessing as mp
        self.ctx = mp.get_context('spawn')
        self.args = (spec, factory, num_classes)
        self.workers = jobs
        self.queue = self.ctx.Queue()
        self._frames: dict[int, int] = {}
        self.pool: Any = None
        self._pool_of: dict[Any, Any] = {}   # handle -> the pool that runs it (a broken pool is replaced)

    def _pool(self) -> Any:
        from concurrent.futures import ProcessPoolExecutor
        if self.pool is None:
            self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=self.ctx, initializer=_pool_init,
                                            initargs=(*self.args, self.queue))
        return self.pool

    def free(self, running: int) -> int:
        return self.workers - running

    def submit(self, shard: Shard, out_part: str) -> Any:
        from concurrent.futures.process import BrokenProcessPool
        try:
            handle = self._pool().submit(_pool_run, shard, out_part)
        except BrokenProcessPool:
            # a worker died after the last result was read: its shards fail in result(); this one gets new processes
            self._drop_pool()
            handle = self._pool().submit(_pool_run, shard, out_part)
        self._pool_of[handle] = self.pool
        return handle

    def _drop_pool(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None       # the next submit starts fresh processes

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        from concurrent.futures import FIRST_COMPLETED, wait
        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, handle: Any) -> tuple[str, Any]:
        from concurrent.futures.process import BrokenProcessPool
        pool = self._pool_of.pop(handle, None)
        try:
            return handle.result()
        except BrokenProcessPool as exc:
            if pool is self.pool:   # not a pool submit() already replaced: the next submit starts fresh processes
                self._drop_pool()
            raise _ShardError(f'worker process died ({exc})') from exc

    def frames(self) -> dict[int, int]:
        import queue
        while True:
            try:
                i, n = self.queue.get_nowait()
            except queue.Empty:
                return dict(self._frames)
            self._frames[i] = n

    def cancel(self) -> None:
        if self.pool is not None:
            for p in list(getattr(self.pool, '_processes', {}).values()):
                p.terminate()
            self._drop_pool()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
        self.queue.close()


def local_cpus() -> int:
    """CPUs this process may run on (its affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _ray_socket_room(temp_dir: str) -> bool:
    """Whether Ray's Unix sockets (``<temp>/session_<date>_<pid>/sockets/plasma_store``) fit the 107-byte limit."""
    return len(os.path.abspath(temp_dir)) + len('/session_2026-01-01_00-00-00_000000_1234567/sockets/raylet.12345') \
        <= 107


def ray_temp_dir() -> str:
    """'' when Ray's default temp folder is short enough for its sockets, else a short private one under /tmp.

    Ray puts Unix sockets under its temp folder (``$RAY_TMPDIR``, else ``$TMPDIR``, else /tmp, plus ``/ray``);
    a socket path is limited to 107 bytes, so a long temp path would fail deep in Ray with an OSError.
    """
    base = os.environ.get('RAY_TMPDIR') or os.environ.get('TMPDIR') or '/tmp'
    if _ray_socket_room(os.path.join(base, 'ray')):
        return ''
    import tempfile
    short = '/tmp'
    if not (os.path.isdir(short) and os.access(short, os.W_OK)):
        raise ConfigError(f'the temp folder {base} is too long for Ray\'s Unix sockets (107 bytes) and /tmp is not '
                          'writable; set RAY_TMPDIR to a short writable folder')
    path = tempfile.mkdtemp(prefix='evit-ray-', dir=short)
    LOG.info('Ray temp folder %s (the temp folder %s is too long for Ray\'s Unix sockets)', path, base)
    return path


def _check_reachable(address: str, timeout: float) -> None:
    """A ``host:port`` that refuses or does not answer a TCP connection is one ConfigError now, not a Ray hang."""
    import socket
    target = address.split('://', 1)[-1]
    host, _, port = target.rpartition(':')
    if not host or not port.isdigit():
        return   # 'auto' or another form Ray resolves itself (bounded by the thread timeout)
    try:
        with socket.create_connection((host.strip('[]'), int(port)), timeout=min(timeout, 10.0)):
            pass
    except OSError as exc:
        raise ConfigError(f'cannot connect to the Ray cluster at {address}: {exc.strerror or exc}; use the address '
                          '`ray start --head` printed (--ray-address or RAY_ADDRESS)') from exc


def _probe_cluster(address: str, timeout: float) -> None:
    """Connect to ``address`` from a child process that is killed after ``timeout`` s: Ray itself retries a
    silent address for minutes, and ray.init cannot be cancelled (nor run off the main thread: the processes
    it starts die with the thread that started them)."""
    import subprocess
    code = (f'import logging, ray; ray.init(address={address!r}, logging_level=logging.ERROR); '
            'print(ray.cluster_resources().get("CPU", 0))')
    try:
        r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=timeout,
                           check=False)
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(f'no Ray cluster answers at {address} within --ray-timeout {timeout:g} s; check the '
                          'address and that the cluster is up (ray status), or raise --ray-timeout') from exc
    if r.returncode != 0:
        lines = [ln for ln in (r.stderr or '').splitlines() if ln.strip()]
        raise ConfigError(f'cannot connect to the Ray cluster at {address} ({(lines[-1] if lines else "")[:200]}); '
                          'use the address `ray start --head` printed (--ray-address or RAY_ADDRESS); a cluster with '
                          'token authentication also needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token or '
                          'RAY_AUTH_TOKEN) here')


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(RAY_INSTALL_HINT) from exc
    return ray


class _RayExecutor:
    """Ray actors (one per ``--task-cpus``/``--task-gpus`` slot of the cluster, or ``--jobs``), spread over nodes."""

    def __init__(self, spec: EvalSpec, factory: Callable[[], Any], num_classes: int, opts: ExecutionOptions,
                 shards: int) -> None:
        ray = self.ray = import_ray()
        self.started = False
        self.temp_dir = ''
        if not ray.is_initialized():
            address = opts.ray_address or os.environ.get('RAY_ADDRESS', '')
            if address:
                _check_reachable(address, opts.ray_timeout)
                _probe_cluster(address, opts.ray_timeout)
                try:
                    ray.init(address=address, logging_level=logging.WARNING)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise ConfigError(f'cannot connect to the Ray cluster at {address} ({str(exc)[:200]}); use the '
                                      'address `ray start --head` printed (--ray-address or RAY_ADDRESS); a cluster '
                                      'with token authentication also needs RAY_AUTH_MODE=token and its token '
                                      '(~/.ray/auth_token or RAY_AUTH_TOKEN) here') from exc
            else:   # a local cluster for this run; workers import this evit_ros
                root = str(Path(__file__).resolve().parents[2])
                pp = os.pathsep.join(p for p in (root, os.environ.get('PYTHONPATH', '')) if p)
                self.temp_dir = ray_temp_dir()
                extra = {'_temp_dir': self.temp_dir} if self.temp_dir else {}
                try:
                    ray.init(address='local', include_dashboard=False, logging_level=logging.WARNING,
                             runtime_env={'env_vars': {'PYTHONPATH': pp}}, **extra)
                except OSError as exc:
                    raise ConfigError(f'cannot start a local Ray cluster ({exc}); set RAY_TMPDIR to a short writable '
                                      'folder, or give --ray-address') from exc
                self.started = True
        resources = ray.cluster_resources()
        if opts.task_gpus > 0:
            fit = int(resources.get('GPU', 0) // opts.task_gpus)
            if fit < 1:
                raise ConfigError(f'--task-gpus {opts.task_gpus}: the Ray cluster has {resources.get("GPU", 0)} GPUs')
        else:
            fit = int(resources.get('CPU', 0) // opts.task_cpus)
        if fit < 1:
            raise ConfigError(f'--task-cpus {opts.task_cpus}: the Ray cluster has {resources.get("CPU", 0)} CPUs')
        self.workers = max(1, min(opts.jobs or fit, shards))
        if opts.jobs > fit:
            LOG.warning('--jobs %d but the cluster fits %d workers of --task-cpus %g/--task-gpus %g; the rest wait',
                        opts.jobs, fit, opts.task_cpus, opts.task_gpus)
        import uuid
        board_name = f'evit_ros_progress_{uuid.uuid4().hex[:12]}'   # found by name: no handle in actor arguments
        self.board = ray.remote(num_cpus=0)(_ProgressBoard).options(name=board_name).remote()
        actor = ray.remote(_RayShardWorker).options(num_cpus=opts.task_cpus, num_gpus=opts.task_gpus or None,
                                                    max_restarts=-1, max_task_retries=0,
                                                    scheduling_strategy='SPREAD')
        # small arguments passed by value, so a restarted actor (max_restarts) always has them
        self.actors = [actor.remote(spec, factory, num_classes, board_name) for _ in range(self.workers)]
        self.idle = list(self.actors)
        self.busy: dict[Any, Any] = {}
        self.recovering: dict[Any, Any] = {}   # ping ref -> an actor Ray is restarting after it was lost
        self._frames: dict[int, int] = {}
        self._last_poll = 0.0

    def free(self, running: int) -> int:
        if self.recovering:
            done, _ = self.ray.wait(list(self.recovering), num_returns=len(self.recovering), timeout=0)
            for ref in done:
                actor = self.recovering.pop(ref)
                try:
                    self.ray.get(ref)
                    self.idle.append(actor)          # restarted: give it work again
                except self.ray.exceptions.RayError:
                    self.recovering[actor.ping.remote()] = actor
        return len(self.idle)

    def submit(self, shard: Shard, out_part: str) -> Any:
        actor = self.idle.pop(0)
        ref = actor.run.remote(shard, out_part)
        self.busy[ref] = actor
        return ref

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        if not handles:   # every actor is being restarted
            time.sleep(timeout)
            return []
        done, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        return list(done)

    def result(self, handle: Any) -> tuple[str, Any]:
        actor = self.busy.pop(handle)
        try:
            out = self.ray.get(handle)
            self.idle.append(actor)
            return out
        except self.ray.exceptions.RayActorError as exc:   # the worker process or its node was lost
            self.recovering[actor.ping.remote()] = actor   # back to work once Ray has restarted it
            raise _ShardError(f'Ray worker lost ({str(exc).splitlines()[0][:300]})') from exc
        except self.ray.exceptions.RayError as exc:
            self.idle.append(actor)
            raise _ShardError(f'Ray task failed ({str(exc).splitlines()[0][:300]})') from exc

    def frames(self) -> dict[int, int]:
        now = time.monotonic()
        if now - self._last_poll > 1.0:
            self._last_poll = now
            try:
                self._frames = self.ray.get(self.board.snapshot.remote(), timeout=10)
            except Exception:   # noqa: BLE001 - progress is best effort; results are not
                pass
        return dict(self._frames)

    def cancel(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.busy.clear()

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:   # noqa: BLE001 - already gone
                pass
        self.ray.kill(self.board)
        if self.started:
            self.ray.shutdown()
        if self.temp_dir:
            import shutil
            shutil.rmtree(self.temp_dir, ignore_errors=True)


class _ProgressBoard:
    """A zero-CPU Ray actor the workers report frame counts to; the driver polls it."""

    def __init__(self) -> None:
        self.frames: dict[int, int] = {}

    def report(self, index: int, frames: int) -> None:
        self.frames[index] = frames

    def snapshot(self) -> dict[int, int]:
        return dict(self.frames)


class _RayShardWorker:
    def __init__(self, spec: EvalSpec, factory: Callable[[], Any], num_classes: int, board_name: str) -> None:
        self.worker = ShardWorker(spec, factory, num_classes)
        self.board_name = board_name
        self.board: Any = None

    def _report(self, index: int, frames: int) -> None:
        import ray
        try:
            if self.board is None:
                self.board = ray.get_actor(self.board_name)
            self.board.report.remote(index, frames)
        except Exception:   # noqa: BLE001 - progress is best effort
            pass

    def run(self, shard: Shard, out_part: str) -> tuple[str, Any]:
        return self.worker.run(shard, out_part, lambda n: self._report(shard.index, n))

    def ping(self) -> bool:
        return True


# -- the driver ------------------------------------------------------------------------------------------

class _DriverProgress:
    """One line over all shards on the driver: frames done / total, shards done, retried, failed."""

    def __init__(self, total_frames: int, total_shards: int, enabled: bool) -> None:
        self.total, self.shards, self.enabled = total_frames, total_shards, enabled
        self.start = self._last = time.monotonic()
        self.tty = sys.stderr.isatty()
        self._said = (-1, -1, -1)

    def update(self, frames: int, done: int, failed: int, retried: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < (0.5 if self.tty else 10.0)):
            return
        if force and self._said == (frames, done, failed):
            return
        self._last, self._said = now, (frames, done, failed)
        pct = f' ({100.0 * frames / self.total:.1f}%)' if self.total else ''
        line = (f'eval: {frames}/{self.total} frames{pct} {frames / max(now - self.start, 1e-9):.1f} fps | '
                f'shards {done}/{self.shards} done, {failed} failed, {retried} retried')
        sys.stderr.write(('\r' + line) if self.tty else line + '\n')
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write('\n')


def make_executor(spec: EvalSpec, factory: Callable[[], Any], num_classes: int, opts: ExecutionOptions,
                  shards: int) -> Any:
    if opts.executor == 'ray':
        return _RayExecutor(spec, factory, num_classes, opts, shards)
    cpus = local_cpus()
    if opts.jobs > cpus:   # each worker loads a model: more workers than CPUs only costs memory
        LOG.warning('--jobs %d is more than the %d CPUs of this machine; using at most %d workers', opts.jobs, cpus,
                    cpus)
    jobs = min(opts.jobs or 1, cpus, max(1, shards))
    if jobs <= 1:
        return _InlineExecutor(spec, factory, num_classes)
    return _ProcessExecutor(spec, factory, num_classes, jobs)


def execute(plan: ShardPlan, spec: EvalSpec, factory: Callable[[], Any], num_classes: int,
            opts: ExecutionOptions, out_part: Callable[[Shard], str] = lambda s: '',
            on_result: Callable[[ShardResult], None] | None = None) -> tuple[EvalState, list[ShardResult]]:
    """Run every shard of ``plan`` on the chosen executor, with retries; the merged state and the raw results.

    The state's ``shards`` entry says what ran: totals, retries, failed shards with their error, shards not run
    (after Ctrl-C). A shard is merged at most once: only its first successful attempt returns a result.
    """
    results: dict[int, ShardResult] = {}
    merger = ResultMerger(num_classes, spec.samples)
    frames_done = 0
    failures: list[ShardFailure] = list(plan.rejected)
    attempts: dict[int, int] = {}
    pending: deque[Shard] = deque(plan.shards)
    running: dict[Any, Shard] = {}
    retried = 0
    interrupted = False
    progress = _DriverProgress(plan.total_frames, len(plan.shards) + len(plan.rejected), opts.progress)
    ex: Any = None
    try:
        ex = make_executor(spec, factory, num_classes, opts, len(plan.shards)) if plan.shards else None
        while ex is not None and (pending or running):
            while pending and ex.free(len(running)) > 0:
                sh = pending.popleft()
                attempts[sh.index] = attempts.get(sh.index, 0) + 1
                running[ex.submit(sh, out_part(sh))] = sh
            for h in ex.wait(list(running), 0.5):
                sh = running.pop(h)
                try:
                    kind, value = ex.result(h)
                except _ShardError as exc:
                    kind, value = 'error', str(exc)
                if kind == 'setup' and not results:   # before any success: the configuration is wrong, stop
                    raise WorkerSetupError(f'a worker could not build the pipeline: {value}')
                if kind == 'setup':                   # one node's problem (e.g. its GPU): a failed attempt
                    kind, value = 'error', f'worker setup failed: {value}'
                if kind == 'ok':
                    results[sh.index] = value
                    merger.add(value)
                    frames_done += value.state.counters.get('frames', 0)
                    value.state.samples = []   # merged; the driver keeps only small per-shard numbers
                    if on_result is not None:
                        on_result(value)
                    if value.state.interrupted:   # Ctrl-C inside an inline shard: keep its part and stop
                        raise KeyboardInterrupt
                elif kind == 'error' and attempts[sh.index] <= opts.max_retries:
                    retried += 1
                    LOG.warning('shard %s failed (attempt %d of %d): %s; retrying', sh.name, attempts[sh.index],
                                opts.max_retries + 1, value)
                    pending.append(sh)
                else:
                    LOG.error('not evaluated: %s after %d attempts: %s', sh.name, attempts[sh.index],
                              one_line(str(value)))
                    failures.append(ShardFailure(sh.name, sh.bag, one_line(str(value)), attempts[sh.index]))
            frames = ex.frames()
            progress.update(frames_done + sum(frames.get(s.index, 0) for s in running.values()), len(results),
                            len(failures), retried)
    except KeyboardInterrupt:
        interrupted = True
        LOG.warning('interrupted; cancelling %d running and %d queued shards, reporting the %d finished',
                    len(running), len(pending), len(results))
        if ex is not None:
            ex.cancel()
    finally:
        if ex is not None:
            ex.close()
        progress.update(frames_done, len(results), len(failures), retried, force=True)
        progress.close()
    state = merger.finish()
    state.interrupted |= interrupted
    not_run = [s.name for s in plan.shards if s.index not in results
               and all(f.shard != s.name for f in failures)]
    for f in failures:   # one line each in the summary and the report; the exit code says a bag is missing
        state.failed_sources.setdefault(f.shard, f.error)
    state.shards = {'executor': opts.executor, 'total': len(plan.shards) + len(plan.rejected),
                    'done': len(results), 'retried': retried,
                    'failed': [f.to_dict() for f in failures], 'not_run': not_run}
    return state, [results[i] for i in sorted(results)]


def evaluate_shards(bags: list[str] | tuple[str, ...], spec: EvalSpec, factory: Callable[[], Any], num_classes: int,
                    opts: ExecutionOptions) -> EvalState:
    """Plan shards (bag paths checked here, on the driver), run them, merge, publish ``--out-bag``."""
    from evit_ros.eval.out_bags import OutBags
    from evit_ros.eval.shards import plan_shards
    unique, repeats = unique_bags(bags)
    plan = plan_shards(unique, spec, opts.shard_seconds)
    outs = OutBags(spec.out_bag, plan)
    try:
        state, results = execute(plan, spec, factory, num_classes, opts, out_part=outs.part_path)
    except BaseException:
        outs.discard()
        raise
    finally:
        if spec.save_predictions:   # staging folders of workers that died (the others were committed or removed)
            from evit_ros.eval.predictions import remove_stale_partials
            remove_stale_partials(spec.save_predictions, '.partial-')
    state.shards['out_bags'] = outs.publish(results)
    if repeats:
        state.shards['same_bag_given_twice'] = repeats
    return state


def unique_bags(bags: list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Bags without repeats of one file or folder (``bag.mcap``, ``./bag.mcap``, a symlink to it): each is
    evaluated once, and each repeat is said in one line. Returns (bags to evaluate, repeats as one-liners)."""
    first: dict[str, str] = {}
    unique: list[str] = []
    repeats: list[str] = []
    for b in bags:
        key = os.path.realpath(b)
        if key in first:
            line = f'{b} is the same bag as {first[key]}; evaluated once'
            LOG.debug('%s', line)   # said once, in the summary (``note:``) and the report
            repeats.append(line)
            continue
        first[key] = b
        unique.append(b)
    return unique, repeats
