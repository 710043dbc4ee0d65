"""Node overhead benchmark: end-to-end latency through the running node over DDS vs bare backend inference.

    python -m evit_ros.bench.node --json node_bench.json [--frames 20] [--height 512 --width 1024]

* Node: the node runs as a separate process (``python -m evit_ros.ros.segmentation_node``, ONNX Runtime CPU,
  the same ONNX file and thread count, default QoS: best-effort input); this process publishes a
  1024x2048 rgb8 frame on ``/front/image_raw`` and waits for ``segmentation/front/mask`` with its stamp.
  One frame in flight at a time (latency, not throughput); latency = mask received - image published.
* Bare: an ONNX Runtime backend in this process runs ``infer`` on the same frame already resized to the
  network input. Bare and node frames are interleaved (bare, node, bare, node, ...) so both see the same
  machine load and the same idle gaps (ONNX Runtime's thread pool is slower after idling).

* Echo: a node that does no work (``node_baselines echo``) answers each frame with the same messages,
  pre-built; its end-to-end time is the transport floor, and (bare + echo) / bare the ratio a node doing
  no work would reach on this machine.
* Plain (unless ``--no-plain``): a node written the usual way; publish floor: the messages, pre-built, published
  by a plain loop (see :mod:`evit_ros.bench.node_baselines`).

Ratio = median(node end-to-end) / median(bare inference); the target is <= 1.10. The node's own per-stage
medians (from ``/diagnostics``) are reported to show where the overhead goes.

Transport: Fast DDS's default shared-memory segment (512 KiB) cannot carry best-effort samples of a few MB
(every 1024x2048 raw frame is lost). ``--transport shm-large`` (default) points the profiles-file variable of
this distro's Fast DDS (``FASTRTPS_DEFAULT_PROFILES_FILE`` up to Jazzy, ``FASTDDS_DEFAULT_PROFILES_FILE`` from
Kilted) at ``config/fastdds_large_frames.xml`` (a 64 MiB shared-memory segment) for both processes, as a
vehicle with raw megapixel cameras needs; ``--transport default`` keeps the RMW defaults (then use
``--input-reliability reliable``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.bench import loadavg, write_json
from evit_ros.bench.node_baselines import ECHO_NS, FLOOR_NS, PLAIN_NS
from evit_ros.config import BackendConfig, InputConfig, ModelConfig
from evit_ros.errors import ConfigError, EvitError

STAGE_KEYS = ('decode', 'preprocess', 'infer', 'postprocess', 'publish', 'host', 'end_to_end')
OURS_NS = '/segmentation/front'
TARGET_RATIO = 1.10
TARGET_PLAIN = 4.0
HOST_TARGET_MS = 12.0
LARGE_FRAMES_PROFILE = Path(__file__).resolve().parents[2] / 'config' / 'fastdds_large_frames.xml'


def _frame(height: int, width: int) -> np.ndarray:
    from evit_ros.synthetic.scenes import generate_scene
    return generate_scene(0, height, width)[0]


def bare_runner(onnx: str, input_cfg: InputConfig, threads: int, frame: np.ndarray) -> tuple[Any, Callable[[], float]]:
    """A loaded backend (the node's head) and a function timing one ``infer`` (ms) of ``frame`` resized to the input."""
    from evit_ros.backends import create_backend
    from evit_ros.contract import NODE_HEAD
    from evit_ros.pipeline import Preprocessor
    backend = create_backend(BackendConfig(type='onnxruntime', onnx_path=onnx, threads=threads, precision='fp32'),
                             model=ModelConfig(), input_cfg=input_cfg, head=NODE_HEAD)
    backend.load()
    pre = Preprocessor(backend.io.input_hw, input_cfg.resize_mode, input_cfg.interpolation)
    batch = pre.batch_buffer(1)
    pre.run_one(frame, batch[0])

    def once() -> float:
        t0 = time.perf_counter()
        backend.infer(batch)
        return (time.perf_counter() - t0) * 1e3
    return backend, once


def plain_onnx(input_cfg: InputConfig) -> str:
    """The same network and weights as float32 NCHW in, 1/8 logits out (what a plain node exports), cached."""
    from evit_ros.backends import cache_dir, resolve_checkpoint
    from evit_ros.export.onnx_export import export_onnx
    model = ModelConfig()
    ckpt = resolve_checkpoint(model)
    from evit_ros.model.checkpoint import checkpoint_sha256
    path = cache_dir() / 'onnx' / (f'plain_{model.name}_{checkpoint_sha256(ckpt)[:12]}_{input_cfg.height}x'
                                   f'{input_cfg.width}_float_logits.onnx')
    if not path.is_file():
        export_onnx(model.name, path, height=input_cfg.height, width=input_cfg.width, checkpoint=ckpt, head='logits',
                    input_format='float-nchw')
    return str(path)


def output_topics(subscribe: str, ns: str) -> list[str]:
    """Topics whose message for a frame must arrive before the frame counts as done."""
    if subscribe == 'mask':
        return [f'{ns}/mask']
    topics = [f'{ns}/{o}' for o in ('mask', 'color_mask', 'overlay', 'confidence')]
    if ns == OURS_NS:
        topics += [f'{ns}/drivable/drivable/{o}' for o in ('mask', 'grid', 'boundary')]
    return topics


def memcpy_ms(frame: np.ndarray, n: int = 20) -> float:
    """Median time (ms) of a plain copy of the frame's bytes in this process: the floor of any frame work."""
    src = np.ascontiguousarray(frame).reshape(-1)
    dst = np.empty_like(src)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def _camera_info(hw: tuple[int, int]) -> Any:
    from sensor_msgs.msg import CameraInfo
    h, w = hw
    fx = w / 2.0 / np.tan(np.radians(45.0))
    msg = CameraInfo()
    msg.height, msg.width = h, w
    msg.k = [fx, 0.0, (w - 1) / 2.0, 0.0, fx, (h - 1) / 2.0, 0.0, 0.0, 1.0]
    return msg


def measure(onnx: str, input_cfg: InputConfig, threads: int, frame: np.ndarray, n: int, warmup: int,
            reliability: str, bare: Callable[[], float], *, subscribe: str = 'mask', plain: str = '',
            timeout_s: float = 120.0) -> dict[str, Any]:
    """Interleaved bare / node / plain-node frames, then the publish floor; raw samples and stage medians."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PolygonStamped
    from nav_msgs.msg import OccupancyGrid
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import CameraInfo, Image

    from evit_ros.ros import conversions as conv
    from evit_ros.ros.bag_player import stop_node_process

    cmd = [sys.executable, '-m', 'evit_ros.ros.segmentation_node', '--ros-args',
           '--log-level', os.environ.get('EVIT_BENCH_LOG', 'warn'), '-p', f'qos.input_reliability:={reliability}',
           '-p', 'backend.type:=onnxruntime', '-p', f'backend.onnx_path:={onnx}', '-p', f'backend.threads:={threads}',
           '-p', 'backend.precision:=fp32', '-p', f'input.height:={input_cfg.height}',
           '-p', f'input.width:={input_cfg.width}', '-p', 'diagnostics.latency_budget_ms:=60000.0',
           '-p', 'cameras.front.camera_info_topic:=/front/camera_info', '-p', 'cameras.front.mount.pitch_deg:=5.0']
    procs = [subprocess.Popen(cmd, env=os.environ.copy())]
    cam_hw = (int(frame.shape[0]), int(frame.shape[1]))
    base = [sys.executable, '-m', 'evit_ros.bench.node_baselines']
    procs.append(subprocess.Popen(base + ['echo', '--subscribe', subscribe, '--camera-height', str(cam_hw[0]),
                                          '--camera-width', str(cam_hw[1])], env=os.environ.copy()))
    if plain:
        procs.append(subprocess.Popen(base + ['plain', '--onnx', plain, '--threads', str(threads), '--subscribe',
                                              subscribe], env=os.environ.copy()))
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node('evit_bench_node', context=ctx)
    arrived: dict[str, dict[int, float]] = {}
    diag: dict[str, float] = {}
    cond = threading.Condition()
    types = {'grid': OccupancyGrid, 'boundary': PolygonStamped}

    def on_output(topic: str, msg: Any) -> None:
        t = time.perf_counter()
        with cond:
            arrived.setdefault(topic, {})[conv.stamp_to_ns(msg.header.stamp)] = t
            cond.notify_all()

    def on_diag(msg: Any) -> None:
        for st in msg.status:
            if st.name.endswith('camera front'):
                values = {kv.key: kv.value for kv in st.values}
                with cond:
                    for s in STAGE_KEYS:
                        v = values.get(f'latency.{s}.p50_ms', 'nan')
                        if v != 'nan':
                            diag[s] = float(v)

    ours = output_topics(subscribe, OURS_NS)
    theirs = output_topics(subscribe, PLAIN_NS) if plain else []
    floor = [f'{FLOOR_NS}/{k}' for k in _floor_keys(subscribe)]
    echo = [f'{ECHO_NS}/{k}' for k in _floor_keys(subscribe)]
    for topic in ours + theirs + floor + echo:
        node.create_subscription(types.get(topic.rsplit('/', 1)[1], Image), topic, partial(on_output, topic),
                                 QoSProfile(depth=5))
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, QoSProfile(depth=5))
    pub = node.create_publisher(Image, '/front/image_raw', QoSProfile(depth=1))
    pub_plain = node.create_publisher(Image, f'{PLAIN_NS}/image_raw', QoSProfile(depth=1))
    pub_echo = node.create_publisher(Image, f'{ECHO_NS}/image_raw', QoSProfile(depth=1))
    pub_info = node.create_publisher(CameraInfo, '/front/camera_info', QoSProfile(depth=1))
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    msg = conv.numpy_to_image(frame, 'rgb8')
    msg.header.frame_id = 'front_optical'
    info = _camera_info(cam_hw)
    info.header.frame_id = 'front_optical'
    out: dict[str, Any] = {'bare': [], 'node': [], 'node_mask': [], 'plain': [], 'echo': [], 'echo_mask': [],
                           'resends': 0}

    def one_frame(publisher: Any, topics: list[str], i: int) -> tuple[float, float]:
        """Publish the frame until every topic of its stamp arrives; (all-topics ms, first-topic ms)."""
        for _ in range(10):       # best-effort input: a lost frame is resent (and counted)
            msg.header.stamp = node.get_clock().now().to_msg()
            key = conv.stamp_to_ns(msg.header.stamp)
            if publisher is pub:
                info.header.stamp = msg.header.stamp
                pub_info.publish(info)
            t_pub = time.perf_counter()
            publisher.publish(msg)
            with cond:
                ok = cond.wait_for(lambda k=key: any(k in arrived.get(t, {}) for t in topics), timeout=5.0)
                if ok:   # the frame got through: wait for its remaining outputs (slow on a loaded machine)
                    ok = cond.wait_for(lambda k=key: all(k in arrived.get(t, {}) for t in topics), timeout=60.0)
                got = {t: arrived.get(t, {}).get(key) for t in topics}
                for t in topics:
                    arrived.get(t, {}).clear()
            if ok:
                return (max(v for v in got.values() if v is not None) - t_pub) * 1e3, \
                    (got[topics[0]] - t_pub) * 1e3  # type: ignore[operator]
            out['resends'] += 1
            missing = [t for t, v in got.items() if v is None]
            if len(missing) < len(topics):
                raise EvitError(f'frame {i}: no message on {missing} (the others arrived); is that output computed?')
        raise EvitError(f'no output for frame {i} after 10 attempts: the frames do not reach the node '
                        '(try --transport shm-large or --input-reliability reliable)')

    try:
        deadline = time.monotonic() + timeout_s
        while not (pub.get_subscription_count() > 0 and all(node.count_publishers(t) > 0 for t in ours)
                   and pub_echo.get_subscription_count() > 0 and all(node.count_publishers(t) > 0 for t in echo)
                   and (not plain or (pub_plain.get_subscription_count() > 0
                                      and all(node.count_publishers(t) > 0 for t in theirs)))):
            for p in procs:
                if p.poll() is not None:
                    raise EvitError(f'{" ".join(p.args[1:4])} exited with code {p.returncode} during startup; '
                                    'see its log above')
            if time.monotonic() > deadline:
                raise EvitError(f'the node did not come up within {timeout_s:.0f} s')
            time.sleep(0.05)
        time.sleep(0.5)   # let the nodes see our subscriptions
        for i in range(warmup + n):
            b = bare()
            time.sleep(0.02)
            e2e, first = one_frame(pub, ours, i)
            time.sleep(0.02)
            pl = one_frame(pub_plain, theirs, i)[0] if plain else float('nan')
            time.sleep(0.02)
            ec, ec_first = one_frame(pub_echo, echo, i)
            if i >= warmup:
                out['echo'].append(ec)
                out['echo_mask'].append(ec_first)
                out['bare'].append(b)
                out['node'].append(e2e)
                out['node_mask'].append(first)
                out['plain'].append(pl)
            time.sleep(0.02)
        time.sleep(1.2)   # one more diagnostics report with every frame in it
        with cond:
            out['stages'] = dict(diag)
        for p in procs:
            stop_node_process(p)
        # the publish floor: the same messages, pre-built, published by a plain rclpy loop (nodes stopped)
        floor_proc = subprocess.run(base + ['floor', '--subscribe', subscribe, '--rounds', str(max(n, 10)),
                                            '--camera-height', str(cam_hw[0]), '--camera-width', str(cam_hw[1])],
                                    env=os.environ.copy(), capture_output=True, text=True, timeout=timeout_s)
        lines = [ln for ln in floor_proc.stdout.splitlines() if ln.startswith('{')]
        if floor_proc.returncode != 0 or not lines:
            raise EvitError(f'the publish-floor process failed ({floor_proc.returncode}): {floor_proc.stderr[-400:]}')
        out['floor'] = json.loads(lines[-1])['publish_ms']
    finally:
        for p in procs:
            stop_node_process(p)
        executor.shutdown(timeout_sec=1.0)
        spin.join(timeout=2.0)
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    return out


def _floor_keys(subscribe: str) -> list[str]:
    from evit_ros.bench.node_baselines import floor_messages
    return list(floor_messages((32, 32), subscribe))


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, float)
    return {'p50': float(np.median(a)), 'p95': float(np.percentile(a, 95)), 'min': float(a.min()),
            'max': float(a.max()), 'mean': float(a.mean()), 'n': int(a.size)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of one invocation as a JSON-ready dict (see the module docstring)."""
    input_cfg = InputConfig(height=args.height, width=args.width)
    cam_h, cam_w = args.camera_height, args.camera_width
    if cam_h < 32 or cam_w < 32:
        raise ConfigError(f'--camera-height/--camera-width {cam_h}x{cam_w} must be at least 32')
    if args.transport == 'shm-large':
        if not LARGE_FRAMES_PROFILE.is_file():
            raise ConfigError(f'{LARGE_FRAMES_PROFILE} is missing; run from the source checkout '
                              'or use --transport default')
        from evit_ros.ros.diagnostics import profiles_file_variable
        os.environ[profiles_file_variable()] = str(LARGE_FRAMES_PROFILE)
    frame = _frame(cam_h, cam_w)
    copy_ms = memcpy_ms(frame)
    plain = '' if args.no_plain else plain_onnx(input_cfg)
    backend, bare = bare_runner(args.onnx, input_cfg, args.threads, frame)
    load = os.getloadavg()
    try:
        onnx = str(getattr(backend, 'onnx_path', args.onnx))
        m = measure(onnx, input_cfg, args.threads, frame, args.frames, args.warmup, args.input_reliability, bare,
                    subscribe=args.subscribe, plain=plain)
    finally:
        backend.close()
    b, e, em = _stats(m['bare']), _stats(m['node']), _stats(m['node_mask'])
    fl = _stats(m['floor'])
    ec, ecm = _stats(m['echo']), _stats(m['echo_mask'])
    stages = m['stages']
    ratio = e['p50'] / b['p50']
    host = stages.get('host', float('nan'))
    plain_stats = _stats(m['plain']) if plain else None
    plain_ratio = plain_stats['p50'] / e['p50'] if plain_stats else float('nan')
    host_target = max(HOST_TARGET_MS, 1.5 * fl['p50'])
    return {
        'model': ModelConfig().name, 'backend': 'onnxruntime', 'device': 'cpu', 'onnx': onnx, 'plain_onnx': plain,
        'threads': args.threads, 'input_hw': [args.height, args.width], 'camera_hw': [cam_h, cam_w],
        'encoding': 'rgb8', 'input_reliability': args.input_reliability, 'transport': args.transport,
        'subscribe': args.subscribe, 'outputs': output_topics(args.subscribe, OURS_NS),
        'frames': args.frames, 'bare_infer_ms': b, 'node_end_to_end_ms': e, 'node_mask_end_to_end_ms': em,
        'plain_node_end_to_end_ms': plain_stats, 'node_stage_p50_ms': stages,
        **{f'{k}_ms_p50': v for k, v in stages.items()},
        'ratio_p50': ratio, 'mask_ratio_p50': em['p50'] / b['p50'], 'host_ms_p50': host, 'memcpy_ms': copy_ms,
        'publish_floor_ms': fl['p50'], 'publish_floor_stats_ms': fl, 'plain_node_ratio': plain_ratio,
        'echo_node_end_to_end_ms': ec, 'echo_node_mask_end_to_end_ms': ecm, 'transport_floor_ms': ec['p50'],
        'ratio_floor_p50': (b['p50'] + ec['p50']) / b['p50'],
        'mask_ratio_floor_p50': (b['p50'] + ecm['p50']) / b['p50'],
        'overhead_beyond_floor_ms': e['p50'] - b['p50'] - ec['p50'],
        'targets': {'ratio_p50': TARGET_RATIO, 'host_ms_p50': host_target, 'plain_node_ratio': TARGET_PLAIN},
        'meets': {'ratio_p50': bool(ratio <= TARGET_RATIO), 'host_ms_p50': bool(host <= host_target),
                  'plain_node_ratio': bool(plain_ratio >= TARGET_PLAIN)},
        'resends': m['resends'], 'cpu_count': os.cpu_count(), 'load_average': [round(v, 2) for v in load],
        'load_average_end': loadavg(),
        'load_average_1min': load[0],
        'bare_samples_ms': m['bare'], 'node_samples_ms': m['node'], 'plain_samples_ms': m['plain'],
        'echo_samples_ms': m['echo'],
    }


def table(res: dict[str, Any]) -> str:
    b, e = res['bare_infer_ms'], res['node_end_to_end_ms']
    cam, inp = res['camera_hw'], res['input_hw']
    lines = [f"node overhead: {res['model']} onnxruntime CPU, camera {cam[0]}x{cam[1]} {res['encoding']} "
             f"({res['input_reliability']}, transport {res['transport']}) -> input {inp[0]}x{inp[1]}, "
             f"subscribed: {res['subscribe']}, {res['frames']} frames, load {res['load_average']}",
             '| measurement | p50 ms | p95 ms | min ms | max ms |', '|---|---:|---:|---:|---:|']
    rows = [('bare backend.infer (same engine)', b), ('node end-to-end (publish -> last output received)', e),
            ('node end-to-end, mask only', res['node_mask_end_to_end_ms'])]
    if res['plain_node_end_to_end_ms']:
        rows.append(('plain node end-to-end', res['plain_node_end_to_end_ms']))
    rows.append(('echo node end-to-end (no work: pre-built outputs per frame)', res['echo_node_end_to_end_ms']))
    rows.append(('publish floor (pre-built messages, plain rclpy loop)', res['publish_floor_stats_ms']))
    for name, s in rows:
        lines.append(f"| {name} | {s['p50']:.1f} | {s['p95']:.1f} | {s['min']:.1f} | {s['max']:.1f} |")
    if res['node_stage_p50_ms']:
        lines.append('node stages p50 (ms): ' + ', '.join(f'{k} {v:.1f}' for k, v in res['node_stage_p50_ms'].items()))
    t, ok = res['targets'], res['meets']

    def verdict(k: str) -> str:
        return 'met' if ok[k] else 'NOT met'
    lines.append(f"ratio_p50 = {res['ratio_p50']:.3f} (target <= {t['ratio_p50']}: {verdict('ratio_p50')}); "
                 f"mask-only ratio {res['mask_ratio_p50']:.3f}; a node doing no work would reach "
                 f"{res['ratio_floor_p50']:.3f} (mask {res['mask_ratio_floor_p50']:.3f}): transport floor "
                 f"{res['transport_floor_ms']:.1f} ms, ours beyond bare + floor "
                 f"{res['overhead_beyond_floor_ms']:.1f} ms")
    lines.append(f"host_ms_p50 = {res['host_ms_p50']:.1f} (target <= {t['host_ms_p50']:.1f}: "
                 f"{verdict('host_ms_p50')}); memcpy of one frame {res['memcpy_ms']:.2f} ms; "
                 f"publish floor {res['publish_floor_ms']:.1f} ms")
    lines.append(f"plain_node_ratio = {res['plain_node_ratio']:.2f} (target >= {t['plain_node_ratio']}: "
                 f"{verdict('plain_node_ratio')}); frames resent (any node): {res['resends']}")
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m evit_ros.bench.node', description=__doc__.split('\n\n')[0])
    p.add_argument('--json', default='', help='write the results to this JSON file')
    p.add_argument('--frames', type=int, default=20, help='measured frames (default 20)')
    p.add_argument('--warmup', type=int, default=3, help='unmeasured frames first (default 3)')
    p.add_argument('--height', type=int, default=512, help='network input height (default 512)')
    p.add_argument('--width', type=int, default=1024, help='network input width (default 1024)')
    p.add_argument('--camera-height', type=int, default=1024, help='camera frame height (default 1024)')
    p.add_argument('--camera-width', type=int, default=2048, help='camera frame width (default 2048)')
    p.add_argument('--threads', type=int, default=0, help='ONNX Runtime threads, 0: default (all cores)')
    p.add_argument('--input-reliability', choices=('best_effort', 'reliable'), default='best_effort',
                   help='qos.input_reliability of the node (default best_effort, fixed so runs compare; '
                        'the shipped default is auto)')
    p.add_argument('--transport', choices=('shm-large', 'default'), default='shm-large',
                   help='Fast DDS transport (default shm-large; see the module docstring)')
    p.add_argument('--onnx', default='', help='exported ONNX; default: the backend exports b0 to its cache')
    p.add_argument('--subscribe', choices=('mask', 'all'), default='all',
                   help='outputs subscribed: mask only, or all (mask, color_mask, overlay, confidence and every '
                        'drivable output, with CameraInfo so grid and boundary are computed); default all')
    p.add_argument('--no-plain', action='store_true', help='skip the plain-node baseline')
    args = p.parse_args(argv)
    if args.frames < 1 or args.warmup < 0:
        p.error('--frames must be >= 1 and --warmup >= 0')
    try:
        res = run(args)
    except EvitError as exc:
        sys.stderr.write(f'evit_ros.bench.node: {exc}\n')
        return 2
    sys.stdout.write(table(res) + '\n')
    write_json(args.json, res)
    return 0


if __name__ == '__main__':
    sys.exit(main())
