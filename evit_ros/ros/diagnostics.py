"""Per-camera and engine statistics, and the ``/diagnostics`` DiagnosticArray built from them about once a second.

Counters are updated by the subscription callbacks and the worker thread under one lock per camera;
the diagnostics timer reads them, computes rates over the time since the previous report and latency
percentiles over the last :data:`WINDOW` samples per stage. End-to-end latency is measured on the node
clock (header stamp to publish), so it is right under ``use_sim_time`` replays.

Key names: ``latency.<stage>.{p50,p95,max}_ms`` for stages decode, preprocess, infer, postprocess,
publish, host (decode + preprocess + postprocess + publish of the frame) and end_to_end; plus
greenwave-monitor compatible ``frame_rate_node``, ``frame_rate_msg``,
``current_delay_from_realtime_ms``, ``total_dropped_frames`` and ``expected_frequency``.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from evit_ros.ros import transport
from evit_ros.ros.rates import RATE_WINDOW_S, RateWindow, StampGaps
from evit_ros.ros.transport import (  # noqa: F401 - re-exported: the profile variable per distro
    PROFILES_FILE_FASTDDS2,
    PROFILES_FILE_FASTDDS3,
    PROFILES_FILE_PER_DISTRO,
    TransportChoice,
    profiles_file_variable,
)

SHM_SEGMENT_BYTES = 512 * 1024   # Fast DDS's default shared-memory segment size
# receive: header stamp -> the subscription callback (node clock): the transport's share of end_to_end
STAGES: tuple[str, ...] = ('receive', 'decode', 'preprocess', 'infer', 'postprocess', 'publish', 'host', 'end_to_end')
WINDOW = 256
OK, WARN, ERROR = 0, 1, 2
_LEVEL_BYTES = {OK: b'\x00', WARN: b'\x01', ERROR: b'\x02'}


class StageStats:
    """The last WINDOW samples (ms) of one stage."""

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=WINDOW)

    def add(self, ms: float) -> None:
        self.samples.append(float(ms))

    def summary(self) -> dict[str, float] | None:
        if not self.samples:
            return None
        a = np.fromiter(self.samples, float, len(self.samples))
        return {'p50': float(np.percentile(a, 50)), 'p95': float(np.percentile(a, 95)), 'max': float(a.max()),
                'count': float(a.size)}


class CameraStats:
    """Counters, latency windows and the latest content statistics of one camera."""

    def __init__(self, name: str, topic: str, class_names: Sequence[str]) -> None:
        self.name = name
        self.topic = topic
        self.class_names = tuple(class_names)
        self.lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.dropped = 0
        self.bad: Counter[str] = Counter()
        self.stages = {s: StageStats() for s in STAGES}
        self.last_rx: float | None = None          # monotonic seconds
        self.created = time.monotonic()
        self.class_fractions: np.ndarray | None = None
        self._fractions_reported = True      # the stored class fractions went out in a report: take new ones
        self.groups: dict[str, tuple[float, float]] = {}
        self.grid_status = 'no camera_info_topic configured: no ground grid/boundary'
        self.last_delay_ms: float | None = None
        self.input_qos = ''                 # reliability of the camera subscription (auto QoS decides it)
        self.input_depth = 0                # its history depth (qos.input_depth; 0: unknown)
        self.last_frame_bytes = 0
        self.clock_note = ''                # 'waiting for /clock ...' under use_sim_time without a clock
        self.stamps: Counter[str] = Counter()   # frames left out of latency: future / zero stamps, no clock
        self.max_future_ms = 0.0
        self.sim_time = False               # use_sim_time: a stamp ahead of /clock is not a camera clock fault
        self.clock_jumps = 0                # /clock jumps seen (use_sim_time); each restarts the latency window
        self.low_streak = 0                 # consecutive frames with mean confidence below min_mean_confidence
        self._conf_sum = self._low_sum = 0.0   # since the last report: sums of per-frame mean / low fraction
        self._conf_n = 0
        self._stamp_mark = 0
        self._rx_mark = 0
        self._out_mark = 0
        self._bad_mark = 0
        self._t_mark = time.monotonic()
        self.rx_rate = RateWindow(RATE_WINDOW_S)
        self.out_rate = RateWindow(RATE_WINDOW_S)
        self.gaps = StampGaps()             # frames the transport lost, from header stamp gaps (rates.py)
        self.message_lost = 0               # the DDS reader's own message_lost events (few of the losses)
        self.output_events: Counter[str] = Counter()   # publisher-side events of the camera's mask publisher
        self.output_subscribers = 0          # subscriptions matched to the mask (matched events)
        self._incompatible_mark = 0
        self._missing_mark = 0

    def on_receive(self, nbytes: int = 0, stamp_ns: int = 0, now: float | None = None,
                   receive_ms: float | None = None) -> None:
        """A frame reached the callback: ``nbytes`` of data, header stamp ``stamp_ns``, at monotonic ``now``,
        ``receive_ms`` after its stamp (node clock; None when not measurable)."""
        with self.lock:
            self.received += 1
            if receive_ms is not None:
                self.stages['receive'].add(receive_ms)
            self.last_rx = time.monotonic() if now is None else now
            self.rx_rate.add(self.last_rx)
            self.last_frame_bytes = nbytes
            self.gaps.add(stamp_ns)

    def on_output_event(self, kind: str, n: int) -> None:
        """A publisher event of the camera's mask: 'incompatible_qos' (count) or 'matched' (change)."""
        with self.lock:
            if kind == 'matched':
                self.output_subscribers += n
                self.output_events['matched' if n >= 0 else 'unmatched'] += abs(n)
            else:
                self.output_events[kind] += max(0, n)

    def on_message_lost(self, n: int) -> None:
        with self.lock:
            self.message_lost += max(0, int(n))

    def on_stamp(self, issue: str, ahead_ms: float = 0.0) -> None:
        """A frame whose latency cannot be measured: 'future' stamp, 'zero' stamp or 'no_clock' (sim time)."""
        with self.lock:
            self.stamps[issue] += 1
            self.max_future_ms = max(self.max_future_ms, ahead_ms)

    def on_confidence(self, mean: float, low_fraction: float, min_mean: float, frames: int) -> bool:
        """One frame's uncertainty signal; True when the low-confidence streak has reached ``frames``."""
        with self.lock:
            self._conf_sum += mean
            self._low_sum += low_fraction
            self._conf_n += 1
            self.low_streak = self.low_streak + 1 if mean < min_mean else 0
            return self.low_streak >= frames

    def on_clock_jump(self) -> None:
        """The node clock jumped: restart the end-to-end window and the delay (they would read the jump)."""
        with self.lock:
            self.clock_jumps += 1
            self.stages['end_to_end'] = StageStats()
            self.last_delay_ms = None
            self.max_future_ms = 0.0

    def on_drop(self, n: int = 1) -> None:
        with self.lock:
            self.dropped += n

    def on_bad(self, reason: str) -> None:
        with self.lock:
            self.bad[reason] += 1

    def on_result(self, timings_ms: dict[str, float], class_fractions: np.ndarray | None,
                  groups: dict[str, tuple[float, float]], now: float | None = None) -> None:
        with self.lock:
            self.processed += 1
            self.out_rate.add(time.monotonic() if now is None else now)
            for k, v in timings_ms.items():
                if k in self.stages:
                    self.stages[k].add(v)
            if 'end_to_end' in timings_ms:
                self.last_delay_ms = timings_ms['end_to_end']
            if class_fractions is not None:   # a frame with every statistic: replace (groups may be renamed)
                self.class_fractions = np.array(class_fractions, dtype=float)
                self._fractions_reported = False
                self.groups = dict(groups)
            else:   # only the groups some output needed this frame; the others keep the last full frame's
                self.groups.update(groups)

    def fractions_due(self) -> bool:
        """True when the next report has no class fractions yet: they are counted for one frame per report
        (a histogram of every frame's mask costs about 1 ms that no report would show)."""
        with self.lock:
            return self._fractions_reported

    def status(self, node_name: str, cfg: Any, now: float | None = None) -> Any:
        """DiagnosticStatus of this camera; resets the rate window. ``cfg`` is DiagnosticsConfig."""
        from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
        now = time.monotonic() if now is None else now
        with self.lock:
            in_rate, window_s = self.rx_rate.rate(now)
            out_rate, _ = self.out_rate.rate(now)
            missing = self.gaps.missing
            new_missing = missing - self._missing_mark
            self._missing_mark = missing
            period_ns = self.gaps.period_ns()
            new_bad = sum(self.bad.values()) - self._bad_mark
            stamp_issues = self.stamps['future'] + self.stamps['zero']
            new_stamp_issues = stamp_issues - self._stamp_mark
            self._rx_mark, self._out_mark, self._bad_mark, self._t_mark, self._stamp_mark = (
                self.received, self.processed, sum(self.bad.values()), now, stamp_issues)
            lat = {s: st.summary() for s, st in self.stages.items()}
            values: list[tuple[str, str]] = [
                ('topic', self.topic), ('input_rate_hz', f'{in_rate:.2f}'), ('output_rate_hz', f'{out_rate:.2f}'),
                ('frames_received', str(self.received)), ('frames_processed', str(self.processed)),
                ('dropped_frames', str(self.dropped)), ('bad_frames', str(sum(self.bad.values()))),
                ('input_qos', self.input_qos), ('rate_window_s', f'{window_s:.1f}'),
                ('frames_missing', str(missing)), ('message_lost_events', str(self.message_lost)),
                ('stamp_period_ms', 'nan' if period_ns is None else f'{period_ns / 1e6:.1f}'),
                ('stamp_pauses', str(self.gaps.pauses)), ('output_subscribers', str(self.output_subscribers))]
            values += [(f'output_events.{k}', str(v)) for k, v in sorted(self.output_events.items())]
            new_incompatible = self.output_events['incompatible_qos'] - self._incompatible_mark
            self._incompatible_mark = self.output_events['incompatible_qos']
            values += [(f'bad_frames.{r}', str(n)) for r, n in sorted(self.bad.items())]
            values += [(f'stamps_excluded.{r}', str(n)) for r, n in sorted(self.stamps.items())]
            if self.clock_jumps:
                values.append(('clock_jumps', str(self.clock_jumps)))
            for s in STAGES:
                sm = lat[s]
                for q in ('p50', 'p95', 'max'):
                    values.append((f'latency.{s}.{q}_ms', 'nan' if sm is None else f'{sm[q]:.2f}'))
            for g, (frac, roi_frac) in sorted(self.groups.items()):
                values += [(f'drivable.{g}.fraction', f'{frac:.4f}'), (f'drivable.{g}.roi_fraction', f'{roi_frac:.4f}')]
            self._fractions_reported = True
            if self.class_fractions is not None:
                for i, f in enumerate(self.class_fractions):
                    name = self.class_names[i] if i < len(self.class_names) else str(i)
                    values.append((f'class_fraction.{name.replace(" ", "_")}', f'{f:.4f}'))
            values.append(('grid', self.grid_status))
            n_conf = self._conf_n
            conf_mean = self._conf_sum / n_conf if n_conf else float('nan')
            low_mean = self._low_sum / n_conf if n_conf else float('nan')
            low_streak = self.low_streak
            self._conf_sum = self._low_sum = 0.0
            self._conf_n = 0
            values += [('confidence.mean', f'{conf_mean:.3f}'), ('confidence.low_fraction', f'{low_mean:.3f}'),
                       ('confidence.low_streak_frames', str(low_streak))]
            values += [('frame_rate_node', f'{in_rate:.2f}'), ('frame_rate_msg', f'{out_rate:.2f}'),
                       ('current_delay_from_realtime_ms',
                        'nan' if self.last_delay_ms is None else f'{self.last_delay_ms:.2f}'),
                       ('total_dropped_frames', str(self.dropped)),
                       ('expected_frequency', f'{cfg.expected_rate_hz:.2f}')]
            last_rx, received = self.last_rx, self.received
            frame_bytes, future_ms, clock_note = self.last_frame_bytes, self.max_future_ms, self.clock_note
            sim_time = self.sim_time
        level = OK
        msgs: list[str] = []
        silent_for = now - (last_rx if last_rx is not None else self.created)
        if silent_for > cfg.silence_timeout_s:
            if last_rx is None:
                level = max(level, WARN)
                msgs.append(f'no frames received yet on {self.topic}' + lost_frames_hint(self.input_qos, 0))
            else:
                level = ERROR
                msgs.append(f'camera silent for {silent_for:.1f} s on {self.topic}')
        e2e = lat['end_to_end']
        if e2e is not None and received:
            if e2e['p50'] > cfg.latency_budget_ms:
                level = ERROR
                msgs.append(f'end-to-end latency p50 {e2e["p50"]:.0f} ms over budget {cfg.latency_budget_ms:.0f} ms'
                            + latency_breakdown(lat, 'p50', cfg.latency_budget_ms))
            elif e2e['p95'] > cfg.latency_budget_ms:
                level = max(level, WARN)
                msgs.append(f'end-to-end latency p95 {e2e["p95"]:.0f} ms over budget {cfg.latency_budget_ms:.0f} ms'
                            + latency_breakdown(lat, 'p95', cfg.latency_budget_ms))
        if clock_note:
            level = max(level, WARN)
            msgs.append(clock_note)
        elif last_rx is not None and silent_for <= cfg.silence_timeout_s and window_s > 0 \
                and rate_below_half(in_rate, cfg.expected_rate_hz):   # window_s 0: fewer than two frames, no rate
            level = max(level, WARN)
            msgs.append(f'input rate {in_rate:.2f} Hz below {0.5 * cfg.expected_rate_hz:.2f} Hz, half the expected '
                        f'{cfg.expected_rate_hz:.2f} Hz' + lost_frames_hint(self.input_qos, frame_bytes))
        if new_missing > 0:
            level = max(level, WARN)
            msgs.append(missing_frames_message(new_missing, missing, received, self.input_qos, self.input_depth))
        if new_incompatible > 0:
            level = max(level, WARN)
            msgs.append(f'{new_incompatible} subscriber(s) of segmentation/{self.name}/mask asked for a QoS it '
                        'do not offer (e.g. transient local or a deadline) and receive nothing: subscribe reliable or '
                        'best effort, volatile (qos.output_reliability)')
        if new_stamp_issues:
            level = max(level, WARN)
            fix = ('under use_sim_time: is /clock from the same source (bag) as the camera stamps?' if sim_time else
                   'sync the camera clock (chrony/PTP) or fix the driver\'s stamps')
            msgs.append(f'{new_stamp_issues} frame(s) with a header stamp in the future (up to {future_ms:.0f} ms '
                        f'ahead) or zero, left out of the latency statistics: {fix}')
        if new_bad:
            level = max(level, WARN)
            msgs.append(f'{new_bad} bad frame(s) since the last report')
        min_mean, streak_frames = getattr(cfg, 'min_mean_confidence', 0.0), getattr(cfg, 'low_confidence_frames', 0)
        if streak_frames and low_streak >= streak_frames:
            level = max(level, WARN)
            msgs.append(f'mean confidence {conf_mean:.2f} below {min_mean:.2f} for the last {low_streak} frames '
                        f'({100 * low_mean:.0f} % of pixels below {cfg.low_confidence_threshold:.2f}): the scene is '
                        'unlike what the model learned (covered or dirty lens, night, weights for another domain)')
        st = DiagnosticStatus(level=_LEVEL_BYTES[level], name=f'{node_name}: camera {self.name}',
                              message='; '.join(msgs) or 'ok', hardware_id=self.name)
        st.values = [KeyValue(key=k, value=v) for k, v in values]
        return st


def rate_below_half(rate_hz: float, expected_hz: float) -> bool:
    """The rate check on the values the message prints (2 decimals), so it never reads "5.00 below 5.00"."""
    return round(rate_hz, 2) < round(0.5 * expected_hz, 2)


def transport_fix(choice: TransportChoice) -> str:
    """The transport's part of every fix for frames lost or late before the callback, for the transport in effect."""
    if choice.applied:
        return choice.cap_fix() if choice.capped() else (
            'the node already receives frames over UDP with large buffers, so they are lost or late before its '
            'socket: check the camera driver\'s load and the network (a camera on another machine: the link, MTU)')
    return (f'start the node with its own Fast DDS profile (segmentation_node sets it unless {transport.SWITCH}=off '
            f'or a Fast DDS profile is configured; now: {choice.summary}), or start the camera and the node with '
            f'the shipped profile ({profiles_file_variable()}=<share>/evit_ros/config/fastdds_large_frames.xml; '
            f'{PROFILES_FILE_PER_DISTRO})')


def lost_frames_fix(choice: TransportChoice | None = None) -> str:
    """The fixes for lost best-effort frames for the transport this node runs on (``choice``: the current one)."""
    choice = transport.current() if choice is None else choice
    return (f'Fix: {transport_fix(choice)}; or use compressed transport (cameras.<cam>.transport: compressed), or '
            'publish the camera reliable (qos.input_reliability auto follows it)')


def latency_breakdown(lat: dict[str, dict[str, float] | None], q: str, budget_ms: float = 0.0,
                      choice: TransportChoice | None = None) -> str:
    """Where an over-budget latency goes: before the callback (transport, executor), inference, the node's own work.

    When the part before the callback alone takes half the budget, the transport's fix is named too.
    """
    parts = []
    for stage, what in (('receive', 'stamp to callback (camera, transport, executor)'), ('infer', 'inference'),
                        ('host', 'the node\'s own work')):
        sm = lat.get(stage)
        if sm is not None:
            parts.append(f'{what} {sm[q]:.0f} ms')
    if not parts:
        return ''
    text = f' ({q} of its parts: ' + ', '.join(parts) + '; the rest is waiting for the worker)'
    receive = lat.get('receive')
    if budget_ms > 0 and receive is not None and receive[q] > 0.5 * budget_ms:
        choice = transport.current() if choice is None else choice
        text += f'. Most of it is before the node\'s callback: {transport_fix(choice)}'
    return text


def missing_frames_message(new: int, total: int, received: int, input_qos: str, depth: int = 0,
                           choice: TransportChoice | None = None) -> str:
    """The WARN for frames lost before the node's callback: how many, the cause (the transport) and the fixes."""
    choice = transport.current() if choice is None else choice
    pct = 100.0 * total / max(1, total + received)
    now = f'now {depth}; ' if depth else ''
    if input_qos == 'best_effort':
        fix = lost_frames_fix(choice)
    else:
        fix = (f'Fix: raise qos.input_depth ({now}a reliable reader replaces the oldest frame still in flight or '
               f'waiting for a repair), {transport_fix(choice)}, publish each camera from its own process, or use '
               'compressed transport')
    return (f'{new} frame(s) missing since the last report ({total} in all, {pct:.1f} % of the stream), from gaps '
            'between header stamps: lost in the transport before the node\'s callback (the node\'s own drops are '
            f'dropped_frames). {fix}')


def lost_frames_hint(input_qos: str, frame_bytes: int, choice: TransportChoice | None = None) -> str:
    """Why frames go missing and the fixes, when the subscription is best effort and frames are large.

    ``frame_bytes`` 0: no frame has arrived yet, so the size is unknown. With the node's own profile the camera
    sends over UDP, not through its shared-memory segment: only a capped receive buffer is left to name.
    """
    if input_qos != 'best_effort' or (frame_bytes and frame_bytes <= SHM_SEGMENT_BYTES):
        return ''
    choice = transport.current() if choice is None else choice
    size = f'frames of {frame_bytes // 1024} KiB' if frame_bytes else 'frames larger than 512 KiB'
    if choice.applied:
        return f': the camera publishes best effort {size}; {choice.cap_fix()}' if choice.capped() else ''
    return (f': the camera publishes best effort and Fast DDS loses best-effort {size} (over its '
            f'{SHM_SEGMENT_BYTES // 1024} KiB shared-memory segment). {lost_frames_fix(choice)}')


class EngineStats:
    """Engine runs: how many, of how many frames, preprocess/infer latency per run, failures; the batching policy.

    One :meth:`on_batch` per engine run (a set of cameras larger than the engine's max batch is several runs).
    ``batches``/``frames``/``mean_batch_size``/``batch_sizes`` count since start (one window for all of them);
    ``window.*`` and the latencies cover the last :data:`WINDOW` runs.
    """

    def __init__(self, describe: dict[str, str]) -> None:
        self.describe = dict(describe)
        self.lock = threading.Lock()
        self.batches = 0
        self.frames = 0
        self.errors = 0
        self.last_error = ''
        self.batch_sizes: deque[int] = deque(maxlen=WINDOW)
        self.size_counts: Counter[int] = Counter()
        self.stages = {s: StageStats() for s in ('preprocess', 'infer', 'postprocess')}
        self.policy: dict[str, str] = {}    # the batching policy's numbers (evit_ros.pipeline.batching)

    def on_batch(self, n: int, timings_ms: dict[str, float]) -> None:
        """One engine run of ``n`` frames and its ``preprocess``/``infer`` times (ms)."""
        with self.lock:
            self.batches += 1
            self.frames += n
            self.batch_sizes.append(n)
            self.size_counts[n] += 1
            for k, v in timings_ms.items():
                if k in self.stages:
                    self.stages[k].add(v)

    def set_policy(self, values: dict[str, str]) -> None:
        with self.lock:
            self.policy = dict(values)

    def on_error(self, message: str) -> None:
        with self.lock:
            self.errors += 1
            self.last_error = message

    def status(self, node_name: str, cfg: Any) -> Any:
        from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
        with self.lock:
            values = [(k, v) for k, v in sorted(self.describe.items())]
            values += [('batches', str(self.batches)), ('frames', str(self.frames)),
                       ('mean_batch_size', f'{self.frames / self.batches if self.batches else 0.0:.2f}'),
                       ('batch_sizes', ','.join(f'{n}:{c}' for n, c in sorted(self.size_counts.items()))),
                       ('counts_window', 'since start'), ('window.batches', str(len(self.batch_sizes))),
                       ('window.mean_batch_size',
                        f'{(np.mean(self.batch_sizes) if self.batch_sizes else 0.0):.2f}'),
                       ('latency_window', f'last {WINDOW} engine runs'), ('errors', str(self.errors))]
            values += sorted(self.policy.items())
            for s, stats in self.stages.items():
                sm = stats.summary()
                for q in ('p50', 'p95', 'max'):
                    values.append((f'latency.{s}.{q}_ms', 'nan' if sm is None else f'{sm[q]:.2f}'))
            errors, last_error = self.errors, self.last_error
            infer = self.stages['infer'].summary()
        level, msg = OK, 'ok'
        if infer is not None and infer['p50'] > cfg.latency_budget_ms:
            level, msg = WARN, f'inference p50 {infer["p50"]:.0f} ms alone exceeds the latency budget'
        if errors:
            level, msg = ERROR, f'{errors} inference failure(s); last: {last_error}'
        st = DiagnosticStatus(level=_LEVEL_BYTES[level], name=f'{node_name}: inference engine', message=msg,
                              hardware_id=self.describe.get('backend', 'engine'))
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values]
        return st


def lifecycle_status(node_name: str, state: str, error: str = '') -> Any:
    """The node's lifecycle state while it is not active (active nodes report it in the engine status).

    OK while waiting in a state a lifecycle manager put it in; ERROR with the reason when the last transition
    failed (e.g. configure on a missing engine).
    """
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
    hints = {'unconfigured': 'unconfigured: no engine loaded; configure to load it',
             'inactive': 'inactive: engine loaded, cameras not subscribed; activate to start',
             'finalized': 'finalized: shut down'}
    level = ERROR if error else OK
    msg = f'{state}: last transition failed: {error}' if error else hints.get(state, state)
    st = DiagnosticStatus(level=_LEVEL_BYTES[level], name=f'{node_name}: lifecycle', message=msg,
                          hardware_id='evit_ros')
    st.values = [KeyValue(key='lifecycle_state', value=state), KeyValue(key='last_transition_error', value=error)]
    return st


def diagnostic_array(statuses: list[Any], stamp: Any) -> Any:
    """DiagnosticArray of ``statuses`` stamped ``stamp`` (node clock)."""
    from diagnostic_msgs.msg import DiagnosticArray
    arr = DiagnosticArray()
    arr.header.stamp = stamp
    arr.status = statuses
    return arr
