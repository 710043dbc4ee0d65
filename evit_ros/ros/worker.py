"""The segmentation node's frame worker: the per-camera mailboxes and the one thread that empties them.

Why a module of its own: this is the node's hot path, the loop of the worker thread and the state it shares
with the executor thread, while :mod:`evit_ros.ros.node` (the lifecycle shell) only decides when it runs and
:mod:`evit_ros.ros.outputs` computes and publishes what each frame's subscribers want. It imports nothing from
rclpy, so the node's threading contract (one condition, one update lock, one stop event) reads in one place.

Threading: a subscription callback (:meth:`FrameWorker.offer`) only stores the newest message in its camera's
one-slot mailbox (:attr:`Camera.pending`) under :attr:`FrameWorker.cond` (a frame replaced before the worker took
it is counted as dropped), so callbacks never block and nothing queues without bound. The worker thread takes
every pending frame (a set; when a camera in step with a pending one, a synchronised rig's, has not delivered its
frame of the same instant yet, it waits for it up to GATHER_S; oldest header stamp first; frames of the same
instant in an order that rotates from set to set, so no camera is always last), and runs the set through
:class:`~evit_ros.pipeline.Segmenter` in chunks whose size the batching policy (:mod:`evit_ros.pipeline.batching`,
from the engine's measured cost per run) chooses: each chunk is decoded, inferred and published (the output stage)
before the next, and a frame that arrived meanwhile for a camera of a later chunk replaces the one taken (counted
as dropped). It records each camera's statistics. ``outputs.*``/``drivable.*`` changes arrive through
:meth:`FrameWorker.request_update` and are applied between chunks. Deactivate stops accepting frames,
:meth:`FrameWorker.drain` waits until the frames already taken are published, then :meth:`FrameWorker.stop` ends
the thread.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from evit_ros.config import CameraConfig, NodeConfig
from evit_ros.errors import FrameError
from evit_ros.heap import release_free_heap
from evit_ros.pipeline import GroundProjector, Segmenter
from evit_ros.pipeline.batching import BatchPolicy, calibrate
from evit_ros.ros import conversions as conv
from evit_ros.ros.diagnostics import STAGES, CameraStats, EngineStats
from evit_ros.ros.outputs import OutputStage

if TYPE_CHECKING:   # qos imports rclpy; only the annotation is needed here
    from evit_ros.ros.qos import InputSubscription

THREAD_NAME = 'evit_segmentation_worker'
GATHER_S = 0.010          # the longest the worker waits for the rest of a synchronised set
IN_STEP_NS = 1_000_000    # frames stamped this close together are of the same instant
# After a /clock jump (use_sim_time), frames stamped in the timeline the clock left are left out of latency for
# this long: the frames in flight across the jump (the mailbox holds one per camera, so a few at most).
CLOCK_JUMP_GRACE_S = 5.0
DEBUG = 10   # rclpy.logging.LoggingSeverity.DEBUG (this module imports no rclpy)


class Camera:
    """One camera: its mailbox, publishers, intrinsics, projector cache and statistics."""

    def __init__(self, cfg: CameraConfig, stats: CameraStats) -> None:
        self.cfg = cfg
        self.stats = stats
        self.pending: Any = None
        self.pubs: dict[str, Any] = {}
        self.group_pubs: dict[str, dict[str, Any]] = {}
        self.info: tuple[tuple[float, ...], int, int] | None = None
        self.projector: GroundProjector | None = None
        self.projector_key: Any = None
        self.label_info_pub: Any = None
        self.image_sub: InputSubscription | None = None
        self.info_sub: InputSubscription | None = None
        self.last_pixels = 0
        self.last_stamp_ns: int | None = None   # header stamp of the last frame the worker took


def in_step(cameras: Iterable[Camera]) -> list[Camera]:
    """Cameras without a pending frame whose last frame was stamped at the same instant (within
    :data:`IN_STEP_NS`) as the last frame of a camera that has one now: a synchronised rig's frames of the next
    instant are on their way, so the worker waits (at most :data:`GATHER_S`) to take them as one set."""
    cams = list(cameras)
    pending = [c.last_stamp_ns for c in cams if c.pending is not None and c.last_stamp_ns is not None]
    return [c for c in cams if c.pending is None and c.last_stamp_ns is not None
            and any(abs(c.last_stamp_ns - s) <= IN_STEP_NS for s in pending)]


class FrameWorker:
    """The worker thread and the state it shares with the callbacks and the lifecycle transitions.

    One per node, for the node's lifetime (the stop event is the one the output stage checks, and an update
    requested while inactive is applied by the next activation's first batch). ``log`` is the node's ROS
    logger, ``clock`` its clock (latency of each frame), ``config`` returns the node's current configuration.
    """

    def __init__(self, log: Any, clock: Any, config: Callable[[], NodeConfig]) -> None:
        self._log = log
        self._clock = clock
        self._config = config
        self.stop_event = threading.Event()   # set: the thread ends (the output stage stops between cameras)
        self.cond = threading.Condition()     # guards every mailbox, _accepting and busy
        self._update_lock = threading.Lock()
        self._pending_update: NodeConfig | None = None
        self._thread: threading.Thread | None = None
        self._accepting = False        # camera callbacks store frames only while active
        self.busy = False              # the worker is between taking frames and having published them
        self._start = 0                # the camera the next set starts with (rotates)
        self.policy: BatchPolicy | None = None
        self._jump: tuple[int, int, float] | None = None   # last clock jump: (clock after it ns, delta ns, monotonic s)

    # -- callers on other threads ------------------------------------------------------------------------
    def offer(self, cam: Camera, msg: Any) -> None:
        """A camera callback (executor thread): the newest frame replaces the one not yet taken."""
        stamp_ns = conv.stamp_to_ns(msg.header.stamp)
        now_ns = self._clock.now().nanoseconds
        receive_ms = (now_ns - stamp_ns) / 1e6 if 0 < stamp_ns <= now_ns and not self.across_jump(stamp_ns) else None
        with self.cond:
            if not self._accepting:   # a callback already dispatched when deactivate unsubscribed
                return
            cam.stats.on_receive(len(msg.data), stamp_ns, receive_ms=receive_ms)
            if cam.pending is not None:
                cam.stats.on_drop()
            cam.pending = msg
            self.cond.notify()

    def on_clock_jump(self, to_ns: int, delta_ns: int) -> None:
        """The node clock jumped by ``delta_ns`` to ``to_ns`` (a /clock jump): frames stamped before it are not
        latency samples (the executor thread calls this; the worker reads the one tuple)."""
        self._jump = (int(to_ns), int(delta_ns), time.monotonic())

    def across_jump(self, stamp_ns: int) -> bool:
        """True for a frame stamped in the timeline the clock left at its last jump (within the grace time): its
        stamp is nearer to where the clock was than to where it jumped."""
        jump = self._jump
        if jump is None or time.monotonic() - jump[2] > CLOCK_JUMP_GRACE_S:
            return False
        to_ns, delta_ns, _ = jump
        return abs(stamp_ns - (to_ns - delta_ns)) < abs(stamp_ns - to_ns)

    def request_update(self, cfg: NodeConfig) -> None:
        """Hand ``outputs.*``/``drivable.*`` changes to the worker, which applies them before its next batch."""
        with self._update_lock:
            self._pending_update = cfg

    def accept(self) -> None:
        """Clear the stop event and let the callbacks store frames (activate, before subscribing)."""
        self.stop_event.clear()   # the same Event the output stage checks between cameras
        with self.cond:
            self._accepting = True

    def stop_accepting(self) -> None:
        with self.cond:
            self._accepting = False

    def start(self, cameras: dict[str, Camera], segmenter: Segmenter, outputs: OutputStage,
              engine_stats: EngineStats) -> None:
        """Start the thread; what it works with lives only as long as it runs."""
        self._thread = threading.Thread(target=self._run, args=(cameras, segmenter, outputs, engine_stats),
                                        name=THREAD_NAME, daemon=True)
        self._thread.start()

    def drain(self, cameras: dict[str, Camera], timeout_s: float) -> bool:
        """Wait until the frames taken are published and no mailbox holds one (or the thread is gone)."""
        with self.cond:
            return self.cond.wait_for(
                lambda: not self.busy and all(c.pending is None for c in cameras.values())
                or not self.alive(), timeout=timeout_s)

    def stop(self, timeout_s: float, discard: Iterable[Camera] = ()) -> None:
        """Set the stop event, wake the thread, empty the mailboxes of ``discard`` and wait up to ``timeout_s``."""
        self.stop_event.set()
        with self.cond:
            self.cond.notify_all()
            for cam in discard:
                cam.pending = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the worker thread -------------------------------------------------------------------------------
    def _run(self, cameras: dict[str, Camera], segmenter: Segmenter, outputs: OutputStage,
             engine_stats: EngineStats) -> None:
        self.policy = self._calibrated_policy(segmenter, engine_stats)
        while not self.stop_event.is_set():
            with self.cond:
                if not any(c.pending is not None for c in cameras.values()):
                    self.cond.wait(timeout=0.2)
                self._gather(cameras)
                order = list(cameras.values())
                if order:
                    k = self._start % len(order)
                    order = order[k:] + order[:k]
                taken = [(c, c.pending) for c in order if c.pending is not None]
                # oldest stamp first (a frame the transport delivered late waits no longer); ties, a synchronised
                # rig's frames of one instant, keep the rotation (sort is stable)
                taken.sort(key=lambda cm: conv.stamp_to_ns(cm[1].header.stamp))
                for c, msg in taken:
                    c.pending = None
                    c.last_stamp_ns = conv.stamp_to_ns(msg.header.stamp)
                if taken:
                    self._start += 1
                self.busy = bool(taken)
            if not taken or self.stop_event.is_set():
                self._idle()
                continue
            try:
                self._process(taken, segmenter, outputs, engine_stats)
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything a frame can cause
                if self.stop_event.is_set():
                    return
                if engine_stats is not None:
                    engine_stats.on_error(f'{type(exc).__name__}: {exc}')
                self._log.error(f'processing failed: {type(exc).__name__}: {exc}', throttle_duration_sec=5.0)
            finally:
                self._idle()

    def _gather(self, cameras: dict[str, Camera]) -> None:
        """(``cond`` held) Wait up to :data:`GATHER_S` for the frames of cameras in step with a pending one, so the
        rest of a synchronised set joins it instead of always waiting for the first camera to arrive."""
        deadline = time.monotonic() + GATHER_S
        while in_step(cameras.values()) and not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.cond.wait(timeout=left)

    def _idle(self) -> None:
        """The frames taken are published (or failed): wake a deactivate waiting for the worker."""
        with self.cond:
            self.busy = False
            self.cond.notify_all()

    def _calibrated_policy(self, segmenter: Segmenter, engine_stats: EngineStats) -> BatchPolicy:
        """The batching policy with every batch size of the engine timed once (a failure leaves it unmeasured)."""
        opt = getattr(segmenter.backend, 'opt_batch', None)
        policy = BatchPolicy(segmenter.io.run_batch, self._config().diagnostics.latency_budget_ms,
                             opt if isinstance(opt, int) and opt > 0 else None)
        try:
            calibrate(segmenter.backend, policy.model)
        except Exception as exc:  # noqa: BLE001 - batching then starts from one frame per run and learns
            self._log.warning(f'batching: timing the engine failed ({type(exc).__name__}: {exc}); starting with '
                              'one frame per run')
        if engine_stats is not None:
            engine_stats.set_policy(policy.describe())
        return policy

    def _process(self, taken: list[tuple[Camera, Any]], segmenter: Segmenter, outputs: OutputStage,
                 engine_stats: EngineStats) -> None:
        """One set: chunks of the policy's size, each decoded, inferred and published before the next."""
        cfg = self._config()
        policy = self.policy
        size = len(taken)
        if policy is not None:
            policy.budget_ms = cfg.diagnostics.latency_budget_ms
            size = policy.decide(len(taken)).batch
        for i in range(0, len(taken), size):
            if self.stop_event.is_set():
                return
            chunk = taken[i:i + size]
            if i:
                chunk = self._fresher(chunk)
            segmenter.runs = []
            self._process_chunk(chunk, segmenter, outputs, engine_stats)
            if policy is not None:
                for n, _, infer_ms in segmenter.runs:
                    policy.model.add(n, infer_ms)
        if policy is not None and engine_stats is not None:
            engine_stats.set_policy(policy.describe())

    def _fresher(self, chunk: list[tuple[Camera, Any]]) -> list[tuple[Camera, Any]]:
        """Frames that arrived while earlier chunks ran replace the ones taken (which count as dropped)."""
        out = []
        with self.cond:
            for cam, msg in chunk:
                if cam.pending is not None:
                    cam.stats.on_drop()
                    msg, cam.pending = cam.pending, None
                out.append((cam, msg))
        return out

    def _process_chunk(self, taken: list[tuple[Camera, Any]], segmenter: Segmenter, outputs: OutputStage,
                       engine_stats: EngineStats) -> None:
        with self._update_lock:
            update, self._pending_update = self._pending_update, None
        if update is not None:
            segmenter.update(outputs=update.outputs, drivable=update.drivable)
        cfg = self._config()
        cams, msgs, frames, decode_ms = [], [], [], []
        shrunk = False
        for cam, msg in taken:
            t0 = time.perf_counter()
            try:
                rgb = conv.to_rgb(msg, cfg.input.max_decoded_pixels)
            except FrameError as exc:
                cam.stats.on_bad(exc.reason)
                self._log.warning(f'camera {cam.cfg.name}: bad frame ({exc.reason}): {exc}', throttle_duration_sec=5.0)
                continue
            except Exception as exc:  # noqa: BLE001 - a decoder failing on hostile data is a bad frame, not an engine fault
                cam.stats.on_bad('corrupt')
                self._log.warning(f'camera {cam.cfg.name}: bad frame (corrupt): {type(exc).__name__}: {exc}',
                                  throttle_duration_sec=5.0)
                continue
            pixels = rgb.shape[0] * rgb.shape[1]
            shrunk = shrunk or pixels < cam.last_pixels // 2
            cam.last_pixels = pixels
            cams.append(cam)
            msgs.append(msg)
            frames.append(rgb)
            decode_ms.append((time.perf_counter() - t0) * 1e3)
        if not frames:
            return
        outputs.run(cams, msgs, frames, decode_ms, cfg, engine_stats, self._record)
        if shrunk:   # buffers sized for an outlier (larger) frame were just replaced: give the memory back
            release_free_heap()

    def _record(self, cam: Camera, msg: Any, res: Any, timings: dict[str, float]) -> None:
        """Statistics of one published frame (called by the output stage after the camera's last publish)."""
        now_ns = self._clock.now().nanoseconds
        stamp_ns = conv.stamp_to_ns(msg.header.stamp)
        if now_ns == 0:          # use_sim_time without /clock yet: no latency to measure
            cam.stats.on_stamp('no_clock')
        elif stamp_ns == 0:
            cam.stats.on_stamp('zero')
        elif self.across_jump(stamp_ns):   # in flight across a /clock jump: neither latency nor skew
            cam.stats.on_stamp('clock_jump')
        elif stamp_ns > now_ns:  # stamped in the future: clock skew or a broken driver; never a negative latency
            cam.stats.on_stamp('future', (stamp_ns - now_ns) / 1e6)
        else:
            timings['end_to_end'] = (now_ns - stamp_ns) / 1e6
        cam.stats.on_result(timings, res.class_fractions,
                            {g: (r.fraction, r.roi_fraction) for g, r in res.groups.items()})
        stats = getattr(res, 'confidence_stats', None)
        if stats is not None:
            diag = self._config().diagnostics
            if cam.stats.on_confidence(stats[0], stats[1], diag.min_mean_confidence, diag.low_confidence_frames):
                self._log.warning(
                    f'camera {cam.cfg.name}: mean confidence {stats[0]:.2f} below {diag.min_mean_confidence:.2f} for '
                    f'{cam.stats.low_streak} frames, {100 * stats[1]:.0f} % of pixels below '
                    f'{diag.low_confidence_threshold:.2f}: the scene is unlike what the model learned (covered or '
                    'dirty lens, night for a day model, weights for another domain)', throttle_duration_sec=10.0)
        if self._debug():   # per-frame timing only at --log-level debug: nothing is formatted otherwise
            self._log.debug(f'camera {cam.cfg.name}: frame {stamp_ns / 1e9:.3f}: '
                            + ', '.join(f'{k} {timings[k]:.1f}' for k in STAGES if k in timings) + ' ms')

    def _debug(self) -> bool:
        enabled = getattr(self._log, 'is_enabled_for', None)
        try:
            return bool(enabled(DEBUG)) if enabled is not None else False
        except Exception:  # noqa: BLE001 - a logger without levels: no debug lines
            return False


__all__ = ['GATHER_S', 'IN_STEP_NS', 'THREAD_NAME', 'Camera', 'FrameWorker', 'in_step']
