"""``evit-ros eval --live``: play a bag into a running segmentation node over DDS and score what it publishes.

Unlike the offline evaluator this measures what the vehicle would see: real-rate playback (``rate`` x),
the node's own QoS and threading, dropped frames and end-to-end latency (mask receive wall time minus image
publish wall time). ``/clock`` is published from the bag's log time so a node with ``use_sim_time`` follows it.
Image messages are forwarded as the bag's raw CDR bytes (no conversion); outputs are matched by header stamp.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.errors import ConfigError, DataError, FrameError
from evit_ros.eval.bags import (
    COMPRESSED,
    IMAGE,
    IMAGE_TYPES,
    _decode_image_msg,
    camera_name,
    decode_label_msg,
    open_reader,
    read_messages,
    stamp_ns,
)
from evit_ros.eval.bags import typestore as make_typestore
from evit_ros.eval.scoring import EvalSpec, EvalState, Progress, Scorer, default_palette

LOG = logging.getLogger('evit_ros.eval.live')


def start_node_process(params_file: str = '', extra_params: dict[str, Any] | None = None,
                       env: dict[str, str] | None = None, log_path: str | Path | None = None) -> subprocess.Popen:
    """Start ``python -m evit_ros.ros.segmentation_node`` with ``use_sim_time``; stop it with stop_node_process.

    ``log_path``: the node's stdout and stderr go to this file instead of ours.
    """
    cmd = [sys.executable, '-m', 'evit_ros.ros.segmentation_node', '--ros-args', '-p', 'use_sim_time:=true']
    if params_file:
        cmd += ['--params-file', params_file]
    for k, v in (extra_params or {}).items():
        cmd += ['-p', f"{k}:={v if v != '' else chr(39) * 2}"]   # '' is YAML's empty string; rcl refuses 'k:='
    LOG.info('starting node: %s', ' '.join(cmd))
    if log_path is None:
        return subprocess.Popen(cmd, env=env or os.environ.copy())
    with open(log_path, 'w') as log:   # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or os.environ.copy())


def stop_node_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """SIGINT (clean ROS shutdown), then SIGKILL if it does not exit in time; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)


class _Recorder:
    """Collects (camera, stamp) -> (mask, receive wall time) from the node's mask topics, thread-safe and bounded."""

    def __init__(self, ts: Any, limit: int) -> None:
        self.ts = ts
        self.lock = threading.Lock()
        self.items: list[tuple[str, int, np.ndarray | None, float, str]] = []
        self.limit = limit
        self.overflow = 0

    def callback(self, cam: str) -> Any:
        def cb(raw: bytes) -> None:
            t = time.monotonic()
            try:
                msg = self.ts.deserialize_cdr(bytes(raw), IMAGE)
                item = (cam, stamp_ns(msg), decode_label_msg(msg).copy(), t, '')
            except Exception as exc:  # noqa: BLE001 - a bad output message (FrameError, CDR) is counted
                item = (cam, -1, None, t, type(exc).__name__)
            with self.lock:
                if len(self.items) >= self.limit:
                    self.overflow += 1
                    self.items.pop(0)
                self.items.append(item)
        return cb

    def drain(self) -> list[tuple[str, int, np.ndarray | None, float, str]]:
        with self.lock:
            out, self.items = self.items, []
        return out


def run_live(bag: str, *, image_topics: tuple[str, ...], label_topics: tuple[str, ...] = (), config: Any = None,
             label_format: str = 'trainid', rate: float = 1.0, start_node: bool = False, params_file: str = '',
             node_timeout_s: float = 60.0, max_frames: int = 0, progress: bool = True,
             mask_topic: str = '/segmentation/{cam}/mask', settle_s: float = 3.0, num_classes: int = 19,
             node_params: dict[str, Any] | None = None, samples: int = 0, node_name: str = 'evit_segmentation',
             node_info: dict[str, Any] | None = None, node_process: subprocess.Popen | None = None,
             read_limits: Any = None) -> EvalState:
    """Play ``bag`` into the node (optionally started here), record its masks, and return the scored state.

    Counters: ``frames`` published, ``frames_received``, ``dropped`` (published, no mask by the end),
    ``frames_scored``; latency stage ``end_to_end`` in ms. ``node_info`` (if given) is filled with what the
    node really runs: ``model``, ``backend``, ``input`` (HxW), read from its parameters and diagnostics.
    ``node_process``: a node the caller started; its exit ends the wait for it at once, with its exit code.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage, Image

    if not (0.01 <= rate <= 100.0):
        raise ConfigError(f'--rate {rate} is out of range; use a factor in [0.01, 100] (1.0 = real time)')
    spec = EvalSpec(tuple(image_topics), tuple(label_topics), label_format=label_format, max_frames=max_frames,
                    samples=samples, progress=progress)
    ts = make_typestore()
    state = EvalState(num_classes)
    proc = start_node_process(params_file, node_params) if start_node else node_process
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('evit_bag_player', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        with open_reader(bag, read_limits) as reader:
            conns = [c for c in reader.connections if c.topic in set(image_topics) | set(label_topics)]
            found = {c.topic: c.msgtype for c in conns}
            for t in image_topics:
                if t not in found or found[t] not in IMAGE_TYPES:
                    have = ', '.join(sorted({c.topic for c in reader.connections}))
                    raise DataError(f'bag {bag} has no image topic {t!r}; its topics: {have}')
            out_rel = ReliabilityPolicy.RELIABLE
            if config is not None and config.qos.output_reliability == 'best_effort':
                out_rel = ReliabilityPolicy.BEST_EFFORT
            pubs = {t: node.create_publisher(CompressedImage if found[t] == COMPRESSED else Image, t,
                                             QoSProfile(depth=10)) for t in image_topics}
            clock = node.create_publisher(Clock, '/clock', QoSProfile(depth=10))
            recorder = _Recorder(ts, limit=1024)
            cams = {t: camera_name(t) for t in image_topics}
            for cam in cams.values():
                node.create_subscription(Image, mask_topic.format(cam=cam), recorder.callback(cam),
                                         QoSProfile(depth=50, reliability=out_rel), raw=True)
            engine: dict[str, str] = {}
            _watch_engine(node, engine)
            _wait_for_node(node, pubs, [mask_topic.format(cam=c) for c in cams.values()], node_timeout_s, proc)
            params = _node_parameters(node, node_name, ('model.name', 'backend.type', 'input.height', 'input.width'))
            state = _play(reader, conns, spec, state, pubs, clock, recorder, cams, ts, rate, settle_s, progress,
                          str(bag))
            if node_info is not None:
                node_info.update(_describe_node(params, engine))
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.shutdown(context=context)
        spin.join(timeout=2.0)
        if start_node and proc is not None:   # a node the caller started is the caller's to stop
            code = stop_node_process(proc)
            LOG.info('node exited with %d', code)
    return state


def _watch_engine(node: Any, out: dict[str, str]) -> None:
    """Keep the key/values of the node's ``inference engine`` diagnostics status (the backend really in use)."""
    from diagnostic_msgs.msg import DiagnosticArray

    def cb(msg: Any) -> None:
        for st in msg.status:
            if st.name.endswith(': inference engine'):
                out.update({kv.key: kv.value for kv in st.values})
    node.create_subscription(DiagnosticArray, '/diagnostics', cb, 10)


def _node_parameters(node: Any, node_name: str, names: tuple[str, ...], timeout_s: float = 3.0) -> dict[str, Any]:
    """Values of the node's parameters through its get_parameters service ({} when it does not answer)."""
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python
    client = node.create_client(GetParameters, f'/{node_name}/get_parameters')
    try:
        if not client.wait_for_service(timeout_sec=timeout_s):
            LOG.warning('node %s does not answer get_parameters; the report header shows the evaluator\'s '
                        'configuration', node_name)
            return {}
        fut = client.call_async(GetParameters.Request(names=list(names)))
        deadline = time.monotonic() + timeout_s
        while not fut.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not fut.done() or fut.result() is None:
            return {}
        return {n: parameter_value_to_python(v) for n, v in zip(names, fut.result().values, strict=False)}
    finally:
        node.destroy_client(client)


def _describe_node(params: dict[str, Any], engine: dict[str, str]) -> dict[str, Any]:
    """Report header fields from the node's parameters and engine diagnostics (the backend ``auto`` chose)."""
    out: dict[str, Any] = {}
    if params.get('model.name'):
        out['model'] = params['model.name']
    if engine.get('backend'):
        out['backend'] = engine['backend']
    elif params.get('backend.type'):
        out['backend'] = params['backend.type']
    if params.get('input.height') and params.get('input.width'):
        out['input'] = f'{params["input.height"]}x{params["input.width"]}'
    for key in ('precision', 'device', 'providers'):
        if engine.get(key):
            out[key] = engine[key]
    out['source'] = 'node' if out else 'evaluator (the node did not answer)'
    return out


def _wait_for_node(node: Any, pubs: dict[str, Any], mask_topics: list[str], timeout_s: float,
                   proc: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DataError(f'the node exited with code {proc.returncode} before subscribing; check its log above')
        if all(p.get_subscription_count() > 0 for p in pubs.values()) and all(
                node.count_publishers(t) > 0 for t in mask_topics):
            time.sleep(0.5)   # let the remaining endpoint matching settle
            return
        time.sleep(0.1)
    raise DataError(f'no node subscribed to {", ".join(pubs)} / published {", ".join(mask_topics)} within '
                    f'{timeout_s:.0f} s; start the node (or pass --start-node) with the same ROS_DOMAIN_ID, '
                    'or raise --node-timeout')


def _play(reader: Any, conns: list[Any], spec: EvalSpec, state: EvalState, pubs: dict[str, Any], clock: Any,
          recorder: _Recorder, cams: dict[str, str], ts: Any, rate: float, settle_s: float, progress: bool,
          source: str) -> EvalState:
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock

    scorer = Scorer(state, spec, None, '', source, default_palette(state.num_classes))
    sampled: dict[tuple[str, int], tuple[int, np.ndarray]] = {}   # (camera, stamp) -> (slot, camera image)
    label_cam = {lt: camera_name(it) for it, lt in zip(spec.image_topics, spec.label_topics, strict=False)}
    published: dict[tuple[str, int], float] = {}
    counters: Counter = state.counters
    bar = Progress(source, 0, progress)
    start_wall = None
    first_log = 0
    sent = 0

    def absorb() -> None:
        for cam, st, mask, t_recv, err in recorder.drain():
            if err or mask is None:
                counters['bad_output'] += 1
                continue
            t_pub = published.pop((cam, st), None)
            if t_pub is None:
                counters['unexpected_output'] += 1
                continue
            counters['frames_received'] += 1
            state.latency.add('end_to_end', (t_recv - t_pub) * 1000.0)
            pending = sampled.pop((cam, st), None)
            if pending is not None:
                scorer._sample(pending[0], cam, st, pending[1], mask)
            if spec.label_topics:
                scorer.on_prediction(cam, st, mask)

    try:
        for conn, log_ns, raw in read_messages(reader, conns, source):
            if start_wall is None:
                start_wall, first_log = time.monotonic(), log_ns
            due = start_wall + (log_ns - first_log) / 1e9 / rate
            while True:
                absorb()
                wait = due - time.monotonic()
                if wait <= 0:
                    break
                time.sleep(min(wait, 0.01))
            if conn.topic in label_cam:
                try:
                    msg = ts.deserialize_cdr(raw, conn.msgtype)
                    label = decode_label_msg(msg)
                except FrameError as exc:
                    counters[f'bad_label_{exc.reason}'.replace('bad_label_label_', 'bad_label_')] += 1
                    continue
                except Exception:  # truncated CDR
                    counters['bad_label_deserialize'] += 1
                    continue
                scorer.on_label(label_cam[conn.topic], stamp_ns(msg),
                                scorer.prepare_label(label, spec.label_format))
                continue
            try:
                img_msg = ts.deserialize_cdr(raw, conn.msgtype)
                st = stamp_ns(img_msg)
            except Exception:  # a truncated message is still played: the node must count it too
                counters['bad_image_deserialize'] += 1
                continue
            slot = scorer._take_sample()
            if slot >= 0:
                try:
                    sampled[(cams[conn.topic], st)] = (slot, _decode_image_msg(img_msg, conn.msgtype))
                except Exception:  # noqa: BLE001 - a frame we cannot decode is not sampled; the node counts it
                    pass
            scorer.frames += 1
            sec, nsec = divmod(int(log_ns), 1_000_000_000)
            clock.publish(Clock(clock=Time(sec=sec, nanosec=nsec)))
            published[(cams[conn.topic], st)] = time.monotonic()
            pubs[conn.topic].publish(bytes(raw))
            counters['frames'] += 1
            sent += 1
            bar.update(sent)
            if spec.max_frames and sent >= spec.max_frames:
                break
        end = time.monotonic() + settle_s
        while published and time.monotonic() < end:
            absorb()
            time.sleep(0.02)
        absorb()
    except KeyboardInterrupt:
        state.interrupted = True
    finally:
        counters['dropped'] += len(published)
        counters['output_queue_overflow'] += recorder.overflow
        for cam, st in published:   # the label of a dropped frame is not a data problem: the frame is counted dropped
            scorer.pending_gt.get(cam, {}).pop(st, None)
        scorer.flush()
        bar.close(sent)
    state.sources.append(source)
    return state
