"""``evit-ros watch``: what the node publishes, seen from outside, without ``ros2`` installed.

Prints, every ``interval_s``, each output topic's rate and latency (receive time minus the header stamp, on
this process's ROS clock, so ``use_sim_time`` follows ``/clock`` like the node) and the node's own diagnostics
summary (level and message per camera, its input/output rate, drops and end-to-end p50). By default only the
class masks are subscribed: the node computes the overlay, colour mask and confidence only while someone
subscribes, so watching them would change what is watched. ``--save DIR`` subscribes to each camera's overlay
until it has written a few PNGs, then unsubscribes.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.errors import ConfigError
from evit_ros.ros import conversions as conv

IMAGE_TYPE = 'sensor_msgs/msg/Image'
SUMMARY_KEYS = (('input_rate_hz', 'in Hz'), ('output_rate_hz', 'out Hz'), ('dropped_frames', 'dropped'),
                ('latency.end_to_end.p50_ms', 'e2e p50 ms'))


@dataclass(frozen=True)
class WatchOptions:
    prefix: str = '/segmentation'   # the node's output prefix (namespace + segmentation)
    all_outputs: bool = False       # also the colour mask, overlay, confidence and drivable masks
    duration_s: float = 0.0         # 0: until Ctrl-C
    interval_s: float = 2.0
    save_dir: str = ''
    save_count: int = 3             # overlays per camera with save_dir
    use_sim_time: bool = False

    def check(self) -> None:
        if not self.prefix.startswith('/'):
            raise ConfigError(f'--prefix {self.prefix!r} must be absolute, e.g. /segmentation or /car1/segmentation')
        if not (0.2 <= self.interval_s <= 3600) or self.duration_s < 0 or not (1 <= self.save_count <= 1000):
            raise ConfigError('--interval must be in [0.2, 3600] s, --duration >= 0 and --save-count in [1, 1000]')


@dataclass
class TopicStats:
    """Messages and latency of one output topic since the last print, and in total."""

    count: int = 0
    total: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def take(self) -> tuple[int, list[float]]:
        n, lat = self.count, self.latencies_ms
        self.count, self.latencies_ms = 0, []
        return n, lat


@dataclass
class WatchResult:
    messages: dict[str, int] = field(default_factory=dict)   # output topic -> messages received in total
    saved: list[str] = field(default_factory=list)
    diagnostics: dict[str, tuple[str, str]] = field(default_factory=dict)   # status name -> (level, message)


LEVELS = {0: 'OK', 1: 'WARN', 2: 'ERROR', 3: 'STALE'}
CLOCK_MISMATCH_MS = 3_600_000.0   # a latency over an hour means the stamps come from another clock


def summarize_status(status: Any) -> str:
    """One line of a node's DiagnosticStatus: level, name, message and the keys an operator looks at first."""
    level = _level(status)
    values = {kv.key: kv.value for kv in status.values}
    keys = ', '.join(f'{label} {values[k]}' for k, label in SUMMARY_KEYS if k in values)
    return f'{LEVELS.get(level, str(level)):<5} {status.name}: {status.message}' + (f' [{keys}]' if keys else '')


def watch(options: WatchOptions, *, say: Callable[[str], None] = print,
          stop: threading.Event | None = None) -> WatchResult:
    """Watch until ``duration_s`` passes, ``stop`` is set, or Ctrl-C; returns what was received."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    options.check()
    stop = stop or threading.Event()
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('evit_watch', context=context,
                             parameter_overrides=[Parameter('use_sim_time', value=options.use_sim_time)])
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    lock = threading.Lock()
    stats: dict[str, TopicStats] = {}
    subs: dict[str, Any] = {}
    result = WatchResult()
    latest_diag: dict[str, Any] = {}
    saving: dict[str, Any] = {}
    saved_per_cam: dict[str, int] = {}
    save_dir = Path(options.save_dir) if options.save_dir else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)

    def on_output(topic: str) -> Callable[[Any], None]:
        def cb(msg: Any) -> None:
            now = node.get_clock().now().nanoseconds
            st = conv.stamp_to_ns(msg.header.stamp)
            with lock:
                s = stats.setdefault(topic, TopicStats())
                s.count += 1
                s.total += 1
                if st > 0:
                    s.latencies_ms.append((now - st) / 1e6)
        return cb

    def on_overlay(cam: str) -> Callable[[Any], None]:
        def cb(msg: Any) -> None:
            import cv2
            with lock:
                n = saved_per_cam.get(cam, 0)
                if n >= options.save_count or save_dir is None:
                    return
                saved_per_cam[cam] = n + 1
            path = save_dir / f'{cam}_overlay_{n:02d}.png'
            cv2.imwrite(str(path), cv2.cvtColor(conv.image_to_numpy(msg), cv2.COLOR_RGB2BGR))
            with lock:
                result.saved.append(str(path))
        return cb

    def on_diag(msg: Any) -> None:
        with lock:
            for s in msg.status:
                latest_diag[s.name] = s

    node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, QoSProfile(depth=10))

    def discover() -> None:
        prefix = options.prefix.rstrip('/') + '/'
        for topic, types in node.get_topic_names_and_types():
            if not topic.startswith(prefix) or IMAGE_TYPE not in types:
                continue
            rest = topic[len(prefix):]
            cam, _, kind = rest.partition('/')
            if topic not in subs and (options.all_outputs or kind == 'mask'):
                # reliable readers match reliable and best-effort writers; depth 5 keeps up at camera rates
                subs[topic] = node.create_subscription(Image, topic, on_output(topic), QoSProfile(depth=5))
                say(f'watching {topic}')
            if save_dir is not None and kind == 'overlay' and cam not in saving:
                saving[cam] = node.create_subscription(Image, topic, on_overlay(cam), qos_profile_sensor_data)

    t0 = time.monotonic()
    next_print = t0 + options.interval_s
    try:
        while not stop.is_set():
            discover()
            for cam, sub in list(saving.items()):   # a camera with its overlays written stops costing the node
                if sub is not None and saved_per_cam.get(cam, 0) >= options.save_count:
                    node.destroy_subscription(sub)
                    saving[cam] = None
            now = time.monotonic()
            if now >= next_print:
                _print_report(stats, latest_diag, lock, now - (next_print - options.interval_s), say)
                next_print += options.interval_s
            if options.duration_s and now - t0 >= options.duration_s:
                break
            stop.wait(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        with lock:
            result.messages = {t: s.total for t, s in stats.items()}
            result.diagnostics = {name: (LEVELS.get(_level(s), '?'), s.message) for name, s in latest_diag.items()}
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.shutdown(context=context)
        spin.join(timeout=2.0)
    return result


def _level(status: Any) -> int:
    return status.level if isinstance(status.level, int) else int.from_bytes(status.level, 'little')


def _print_report(stats: dict[str, TopicStats], diag: dict[str, Any], lock: threading.Lock, window_s: float,
                  say: Callable[[str], None]) -> None:
    with lock:
        taken = {t: s.take() for t, s in sorted(stats.items())}
        statuses = [summarize_status(s) for _, s in sorted(diag.items())]
    lines = [f'--- last {window_s:.1f} s']
    if not taken:
        lines.append('no output topic yet (is the node running and active, in this ROS_DOMAIN_ID?)')
    for topic, (n, lat) in taken.items():
        p50 = f'{np.percentile(lat, 50):.1f}' if lat else 'n/a'
        p95 = f'{np.percentile(lat, 95):.1f}' if lat else 'n/a'
        lines.append(f'{topic}: {n / window_s:.1f} Hz, latency (now - stamp) p50 {p50} ms p95 {p95} ms')
    lines += [f'  {s}' for s in statuses]
    if any(p > CLOCK_MISMATCH_MS for _, lat in taken.values() for p in lat[:1]):
        lines.append('  latency of days: the stamps are not on this clock (a recorded bag); play it with --clock, run '
                     'the node with use_sim_time:=true and watch with --use-sim-time')
    say('\n'.join(lines))


__all__ = ['WatchOptions', 'WatchResult', 'summarize_status', 'watch']
