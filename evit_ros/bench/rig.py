"""Surround-rig benchmark: N cameras streaming at a steady rate into one node, every frame accounted for.

    python -m evit_ros.bench.rig --cameras 4 --rate 10 --size 480x640 --duration 20 --json rig.json

Three processes, as on a vehicle: one publisher process for all cameras (``python -m evit_ros.bench.rig publish``:
reliable, depth 10, pre-built rgb8 frames, each camera on its own steady schedule and stamped with its scheduled
capture time, as a driver stamps capture; a send delayed by the machine's load is latency), the node (``python -m
evit_ros.ros.segmentation_node``, ONNX Runtime CPU, its own automatic export of b0 at ``--input``) and this
process, a reliable subscriber that keeps up (depth 10) on every ``segmentation/<cam>/mask`` plus
``/diagnostics``. The publisher and this process run Fast DDS as the environment sets it (defaults unless it sets a
profile); the node applies its own profile (:mod:`evit_ros.ros.transport`) unless ``--node-profile off``.
``--camera-qos best_effort`` publishes the cameras best effort (as many drivers do).

Per camera it prints and writes: frames sent, frames the node received, masks received here, the node's
``dropped_frames`` and ``frames_missing`` (its estimate of transport losses from header stamp gaps), the
accounting ``masks + dropped + missing`` against ``sent``, the delivered mask rate, end-to-end latency
p50/p95 (mask received here - header stamp, one clock), and for the node: the engine's runs, frames and batch
sizes, the batching policy, and CPU seconds of the node and the publisher. ``--rate`` and ``--size`` take one
value, or one per camera separated by commas (``--rate 30,2``, ``--size 1024x2048,480x640``). ``--set
name=value`` passes any node parameter (e.g. ``--set qos.input_depth=1`` to compare).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.bench import loadavg, write_json
from evit_ros.errors import ConfigError, EvitError
from evit_ros.ros.transport import SWITCH, choose

PUB_DEPTH = 10      # a camera driver's usual reliable history (image_transport's default profile)
SUB_DEPTH = 10      # a subscriber that keeps up
LINGER_S = 3.0      # the publisher stays this long after its last frame (a reliable writer repairs late samples)
DRAIN_S = 2.0       # after the last frame: time for masks in flight and one more diagnostics report


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError as exc:
        raise ConfigError(f'--size {text!r} must look like 480x640 (height x width)') from exc
    if h < 32 or w < 32:
        raise ConfigError(f'--size {text!r}: height and width must be at least 32')
    return h, w


def per_camera(text: str, n: int, parse: Any, flag: str) -> list[Any]:
    """One value for every camera, or exactly ``n`` comma-separated values (one per camera)."""
    items = [parse(v) for v in str(text).split(',') if v.strip()]
    if len(items) == 1:
        return items * n
    if len(items) != n:
        raise ConfigError(f'{flag} {text!r} gives {len(items)} values for {n} cameras; give one, or one per camera')
    return items


def camera_names(n: int) -> list[str]:
    return [f'cam{i}' for i in range(n)]


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used, from /proc (0.0 where unreadable)."""
    try:
        fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
    except (OSError, IndexError, ValueError):
        return 0.0


# -- the publisher process ---------------------------------------------------------------------------------
def publish(args: argparse.Namespace) -> int:
    """Publish every camera at its rate for ``--duration`` s once each has a subscriber; print the counts (JSON)."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.time import Time
    from sensor_msgs.msg import Image

    from evit_ros.ros import conversions as conv
    from evit_ros.synthetic.scenes import generate_scene
    names = camera_names(args.cameras)
    rates = per_camera(args.rate, args.cameras, float, '--rate')
    sizes = per_camera(args.size, args.cameras, _parse_size, '--size')
    rclpy.init()
    node = rclpy.create_node('evit_rig_publisher')
    qos = QoSProfile(depth=PUB_DEPTH, reliability=ReliabilityPolicy.BEST_EFFORT
                     if args.camera_qos == 'best_effort' else ReliabilityPolicy.RELIABLE)
    pubs = [node.create_publisher(Image, f'/{n}/image_raw', qos) for n in names]
    msgs = []
    for i, (h, w) in enumerate(sizes):
        msg = conv.numpy_to_image(np.ascontiguousarray(generate_scene(i, h, w)[0]), 'rgb8')
        msg.header.frame_id = f'{names[i]}_optical'
        msgs.append(msg)
    deadline = time.monotonic() + args.wait
    while not all(p.get_subscription_count() > 0 for p in pubs):
        if time.monotonic() > deadline:
            sys.stderr.write('rig publisher: no subscriber on every camera topic in time\n')
            return 2
        time.sleep(0.05)
    time.sleep(args.settle)
    sent = [0] * len(pubs)
    periods = [1.0 / r for r in rates]
    t0 = time.monotonic()
    t0_ns = node.get_clock().now().nanoseconds
    next_t = [t0] * len(pubs)             # all cameras in phase, as a synchronised rig
    # each camera's frame k at t0 + k * period, k < round(duration * rate): a count exact to the frame (summing
    # periods drifted below the end by a rounding error and sent one frame more)
    total = [round(args.duration * r) for r in rates]
    start_ns = time.time_ns()
    while True:
        i = int(np.argmin([t if n < m else np.inf for t, n, m in zip(next_t, sent, total, strict=True)]))
        if sent[i] >= total[i]:
            break
        delay = next_t[i] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        # stamped with its capture time (the schedule), as a camera driver does: a late send is latency
        msgs[i].header.stamp = Time(nanoseconds=t0_ns + int((next_t[i] - t0) * 1e9)).to_msg()
        pubs[i].publish(msgs[i])
        sent[i] += 1
        next_t[i] = t0 + sent[i] * periods[i]
    out = {'sent': dict(zip(names, sent, strict=True)), 'start_ns': start_ns, 'end_ns': time.time_ns(),
           'cpu_s': _cpu_s(os.getpid())}
    time.sleep(LINGER_S)   # reliable: let the last samples be delivered before the writers go away
    sys.stdout.write(json.dumps(out) + '\n')
    sys.stdout.flush()
    node.destroy_node()
    rclpy.shutdown()
    return 0


# -- the measuring process ---------------------------------------------------------------------------------
def node_command(args: argparse.Namespace, names: list[str], rates: list[float]) -> list[str]:
    ih, iw = _parse_size(args.input)
    cmd = [sys.executable, '-m', 'evit_ros.ros.segmentation_node', '--ros-args', '--log-level', args.log_level,
           '-p', 'backend.type:=onnxruntime', '-p', 'backend.precision:=fp32', '-p', f'backend.threads:={args.threads}',
           '-p', f'input.height:={ih}', '-p', f'input.width:={iw}', '-p', 'cameras:=[' + ','.join(names) + ']',
           '-p', f'diagnostics.latency_budget_ms:={args.budget_ms}']
    for n, r in zip(names, rates, strict=True):
        cmd += ['-p', f'cameras.{n}.topic:=/{n}/image_raw', '-p', f'cameras.{n}.expected_rate_hz:={float(r)}']
    if args.onnx:
        cmd += ['-p', f'backend.onnx_path:={args.onnx}']
    for item in args.set:
        cmd += ['-p', item.replace('=', ':=', 1)]
    return cmd


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {'p50': float('nan'), 'p95': float('nan'), 'max': float('nan'), 'n': 0}
    a = np.asarray(values, float)
    return {'p50': float(np.percentile(a, 50)), 'p95': float(np.percentile(a, 95)), 'max': float(a.max()),
            'n': int(a.size)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from evit_ros.ros import conversions as conv
    from evit_ros.ros.bag_player import stop_node_process
    names = camera_names(args.cameras)
    rates = per_camera(args.rate, args.cameras, float, '--rate')
    sizes = per_camera(args.size, args.cameras, _parse_size, '--size')
    env = os.environ.copy()
    node_env = {**env, SWITCH: args.node_profile}   # the node's own Fast DDS profile, or off: the cameras' setup
    node_proc = subprocess.Popen(node_command(args, names, rates), env=node_env)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node('evit_rig_bench', context=ctx)
    lock = threading.Lock()
    latency: dict[str, list[float]] = {n: [] for n in names}
    diag: dict[str, dict[str, str]] = {}
    warns: dict[str, list[tuple[int, str]]] = {n: [] for n in names}   # (wall ns, message)
    counting = threading.Event()

    def on_mask(cam: str, msg: Any) -> None:
        t = time.time_ns()
        if not counting.is_set():
            return
        with lock:
            latency[cam].append((t - conv.stamp_to_ns(msg.header.stamp)) / 1e6)

    def on_diag(msg: Any) -> None:
        with lock:
            for st in msg.status:
                values = {kv.key: kv.value for kv in st.values}
                key = st.name.rsplit(' ', 1)[-1] if ': camera ' in st.name else 'engine' \
                    if st.name.endswith('inference engine') else ''
                if key:
                    diag[key] = values
                    if key in warns and counting.is_set() and st.message != 'ok':
                        warns[key].append((time.time_ns(), st.message))

    qos = QoSProfile(depth=SUB_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
    for n in names:
        node.create_subscription(Image, f'/segmentation/{n}/mask', partial(on_mask, n), qos)
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, QoSProfile(depth=10))
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    pub_proc = None
    load_before = loadavg()
    try:
        deadline = time.monotonic() + args.startup_timeout
        while not all(node.count_publishers(f'/segmentation/{n}/mask') > 0 for n in names):
            if node_proc.poll() is not None:
                raise EvitError(f'the node exited with code {node_proc.returncode} during startup; see its log above')
            if time.monotonic() > deadline:
                raise EvitError(f'the node did not come up within {args.startup_timeout:.0f} s')
            time.sleep(0.1)
        pub_cmd = [sys.executable, '-m', 'evit_ros.bench.rig', 'publish', '--cameras', str(args.cameras),
                   '--rate', args.rate, '--size', args.size, '--duration', str(args.duration),
                   '--camera-qos', args.camera_qos]
        cpu_node0, t_cpu0 = _cpu_s(node_proc.pid), time.monotonic()
        counting.set()
        pub_proc = subprocess.Popen(pub_cmd, env=env, stdout=subprocess.PIPE, text=True)
        out, _ = pub_proc.communicate(timeout=args.duration + args.startup_timeout)
        lines = [ln for ln in out.splitlines() if ln.startswith('{')]
        if pub_proc.returncode != 0 or not lines:
            raise EvitError(f'the publisher failed (exit {pub_proc.returncode})')
        pub = json.loads(lines[-1])
        time.sleep(DRAIN_S)
        cpu_node, cpu_wall = _cpu_s(node_proc.pid) - cpu_node0, time.monotonic() - t_cpu0
        with lock:
            snapshot = {k: dict(v) for k, v in diag.items()}
            lat = {k: list(v) for k, v in latency.items()}
            warn_list = {k: list(v) for k, v in warns.items()}
    finally:
        counting.clear()
        if pub_proc is not None and pub_proc.poll() is None:
            pub_proc.kill()
        stop_node_process(node_proc)
        executor.shutdown(timeout_sec=1.0)
        spin.join(timeout=2.0)
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    wall = (pub['end_ns'] - pub['start_ns']) / 1e9
    cams = {}
    for n, rate, size in zip(names, rates, sizes, strict=True):
        d = snapshot.get(n, {})
        sent = int(pub['sent'][n])
        masks = len(lat[n])
        dropped = int(d.get('dropped_frames', 0))
        missing = int(d.get('frames_missing', 0))
        received = int(d.get('frames_received', 0))
        accounted = masks + dropped + missing
        cams[n] = {'rate_hz': rate, 'size': list(size), 'sent': sent, 'node_received': received,
                   'transport_lost': sent - received, 'frames_missing': missing, 'dropped_frames': dropped,
                   'frames_processed': int(d.get('frames_processed', 0)), 'masks_received': masks,
                   'accounted': accounted, 'accounted_error_pct': 100.0 * (accounted - sent) / max(1, sent),
                   'delivered_rate_hz': masks / wall if wall > 0 else 0.0, 'latency_ms': _stats(lat[n]),
                   # WARNs while the stream ran (after it, every camera is rightly silent)
                   'warnings': [m for t, m in warn_list[n] if pub['start_ns'] + 1e9 <= t <= pub['end_ns']],
                   'node_latency_p50_ms': {k.split('.')[1]: float(v) for k, v in d.items()
                                           if k.startswith('latency.') and k.endswith('.p50_ms') and v != 'nan'},
                   'node_diagnostics': d}
    p50s = [c['latency_ms']['p50'] for c in cams.values() if c['latency_ms']['n']]
    engine = snapshot.get('engine', {})
    return {'cameras': cams, 'engine': engine, 'duration_s': wall, 'input': args.input, 'threads': args.threads,
            'node_params': args.set, 'cpu_s': {'node': cpu_node, 'publisher': pub.get('cpu_s', 0.0)},
            'node_cpu_pct': 100.0 * cpu_node / max(1e-6, cpu_wall),
            'p50_spread_pct': 100.0 * (max(p50s) / min(p50s) - 1.0) if p50s and min(p50s) > 0 else float('nan'),
            'cpu_count': os.cpu_count(), 'load_average': load_before,
            'load_average_end': loadavg(),
            'camera_qos': args.camera_qos,
            'transport': {'node': engine.get('transport', 'unknown'), 'cameras': _camera_transport(env)}}


def _camera_transport(env: dict[str, str]) -> str:
    """What the publisher process (the camera drivers) runs on: the environment's Fast DDS setup, read by the
    node's own rule (:func:`evit_ros.ros.transport.choose`) with the node's profile left out."""
    choice = choose({**env, SWITCH: 'off'}, Path.cwd(), None, None, '')
    return 'Fast DDS defaults' if choice.kind == 'off' else choice.summary


def table(res: dict[str, Any]) -> str:
    lines = [f"surround rig: {len(res['cameras'])} camera(s), {res['duration_s']:.1f} s, node input {res['input']}, "
             f"cameras {res['camera_qos']}, params {res['node_params'] or 'shipped'}, load "
             f"{res['load_average']} -> {res['load_average_end']}",
             f"transport: cameras on {res['transport']['cameras']}; the node on {res['transport']['node']}",
             '| camera | rate Hz | size | sent | node rx | missing (stamps) | dropped | masks | accounted | '
             'delivered Hz | p50 ms | p95 ms |', '|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for n, c in res['cameras'].items():
        lat = c['latency_ms']
        lines.append(f"| {n} | {c['rate_hz']:g} | {c['size'][0]}x{c['size'][1]} | {c['sent']} | {c['node_received']} | "
                     f"{c['frames_missing']} | {c['dropped_frames']} | {c['masks_received']} | "
                     f"{c['accounted']} ({c['accounted_error_pct']:+.1f} %) | {c['delivered_rate_hz']:.2f} | "
                     f"{lat['p50']:.1f} | {lat['p95']:.1f} |")
    e = res['engine']
    keys = ('batches', 'frames', 'mean_batch_size', 'batch_sizes', 'latency.infer.p50_ms', 'batching.batch_size',
            'batching.reason')
    lines.append('engine: ' + ', '.join(f'{k} {e[k]}' for k in keys if k in e))
    costs = sorted((k.rsplit('.b', 1)[1], v) for k, v in e.items() if k.startswith('batching.cost_ms.b'))
    if costs:
        lines.append('engine cost per run by batch size (ms): ' + ', '.join(f'{b}: {v}' for b, v in costs))
    lines.append(f"p50 spread across cameras {res['p50_spread_pct']:.0f} %; CPU: node {res['cpu_s']['node']:.1f} s "
                 f"({res['node_cpu_pct']:.0f} % of one core), publisher {res['cpu_s']['publisher']:.1f} s")
    for n, c in res['cameras'].items():
        kinds: dict[str, int] = {}
        for w in c['warnings']:
            for part in w.split('; '):
                if part.startswith('the rest'):
                    continue
                kind = re.sub(r'[0-9.]+', '#', ' '.join(part.split(' ')[:5]))
                kinds[kind] = kinds.get(kind, 0) + 1
        if kinds:
            lines.append(f"WARN {n} ({len(c['warnings'])} reports): "
                         + ', '.join(f'{k}... x{v}' for k, v in sorted(kinds.items())))
            lines.append(f"  last: {c['warnings'][-1][:400]}")
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m evit_ros.bench.rig', description=__doc__.split('\n\n')[0])
    p.add_argument('mode', nargs='?', choices=('measure', 'publish'), default='measure',
                   help='measure (default); publish is the publisher process the benchmark starts')
    p.add_argument('--cameras', type=int, default=4, help='number of cameras (default 4)')
    p.add_argument('--rate', default='10', help='Hz, one value or one per camera (default 10)')
    p.add_argument('--size', default='480x640', help='camera HxW, one or one per camera (default 480x640)')
    p.add_argument('--duration', type=float, default=20.0, help='seconds of streaming (default 20)')
    p.add_argument('--input', default='256x512', help='network input HxW (default 256x512)')
    p.add_argument('--threads', type=int, default=0, help='ONNX Runtime threads, 0: default (all cores)')
    p.add_argument('--budget-ms', type=float, default=100.0, help='diagnostics.latency_budget_ms (default 100)')
    p.add_argument('--onnx', default='', help='exported ONNX; default: the node exports b0 with a dynamic batch')
    p.add_argument('--camera-qos', choices=('reliable', 'best_effort'), default='reliable',
                   help='the cameras\' reliability (default reliable; depth 10 either way)')
    p.add_argument('--node-profile', choices=('node', 'off'), default='node',
                   help=f'the node\'s own Fast DDS profile ({SWITCH}; default node), or off: Fast DDS as the '
                   'environment configures it, as for the cameras')
    p.add_argument('--set', action='append', default=[], metavar='NAME=VALUE', help='a node parameter (repeatable)')
    p.add_argument('--log-level', default='warn', help='the node\'s log level (default warn)')
    p.add_argument('--startup-timeout', type=float, default=300.0, help='seconds for the node to come up')
    p.add_argument('--wait', type=float, default=60.0, help='publish: seconds to wait for subscribers')
    p.add_argument('--settle', type=float, default=1.0, help='publish: seconds between discovery and the first frame')
    p.add_argument('--json', default='', help='write the results to this JSON file')
    args = p.parse_args(argv)
    if args.cameras < 1 or args.duration <= 0:
        p.error('--cameras must be >= 1 and --duration > 0')
    try:
        if args.mode == 'publish':
            return publish(args)
        res = measure(args)
    except EvitError as exc:
        sys.stderr.write(f'evit_ros.bench.rig: {exc}\n')
        return 2
    sys.stdout.write(table(res) + '\n')
    write_json(args.json, res)
    return 0


if __name__ == '__main__':
    sys.exit(main())
