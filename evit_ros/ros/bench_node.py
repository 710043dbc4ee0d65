"""Node overhead benchmark: end-to-end latency through the running node over DDS vs bare backend inference.

    python -m evit_ros.ros.bench_node --json node_bench.json [--frames 20] [--height 512 --width 1024]

* Node: the node runs as a separate process (``python -m evit_ros.ros.segmentation_node``, ONNX Runtime CPU,
  the same ONNX file and thread count, default QoS: best-effort input); this process publishes a
  1024x2048 rgb8 frame on ``/front/image_raw`` and waits for ``segmentation/front/mask`` with its stamp.
  One frame in flight at a time (latency, not throughput); latency = mask received - image published.
* Bare: an ONNX Runtime backend in this process runs ``infer`` on the same frame already resized to the
  network input. Bare and node frames are interleaved (bare, node, bare, node, ...) so both see the same
  machine load and the same idle gaps (ONNX Runtime's thread pool is slower after idling).

Ratio = median(node end-to-end) / median(bare inference); the target is <= 1.2. The node's own per-stage
medians (from ``/diagnostics``) are reported to show where the overhead goes.

Transport: Fast DDS's default shared-memory segment (512 KiB) cannot carry best-effort samples of a few MB
(every 1024x2048 raw frame is lost). ``--transport shm-large`` (default) points
``FASTRTPS_DEFAULT_PROFILES_FILE`` at ``config/fastdds_large_frames.xml`` (a 64 MiB shared-memory segment) for
both processes, as a
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

from evit_ros.config import BackendConfig, InputConfig, ModelConfig
from evit_ros.errors import ConfigError, EvitError

STAGE_KEYS = ('decode', 'preprocess', 'infer', 'postprocess', 'publish', 'end_to_end')
LARGE_FRAMES_PROFILE = Path(__file__).resolve().parents[2] / 'config' / 'fastdds_large_frames.xml'


def _frame(height: int, width: int) -> np.ndarray:
    from evit_ros.synthetic.scenes import generate_scene
    return generate_scene(0, height, width)[0]


def bare_runner(onnx: str, input_cfg: InputConfig, threads: int, frame: np.ndarray) -> tuple[Any, Callable[[], float]]:
    """A loaded backend and a function timing one ``infer`` (ms) of ``frame`` resized to the network input."""
    from evit_ros.backends import create_backend
    from evit_ros.pipeline import Preprocessor
    backend = create_backend(BackendConfig(type='onnxruntime', onnx_path=onnx, threads=threads, precision='fp32'),
                             model=ModelConfig(), input_cfg=input_cfg, head='labels+confidence')
    backend.load()
    pre = Preprocessor(backend.io.input_hw, input_cfg.resize_mode, input_cfg.interpolation)
    batch = pre.batch_buffer(1)
    pre.run_one(frame, batch[0])

    def once() -> float:
        t0 = time.perf_counter()
        backend.infer(batch)
        return (time.perf_counter() - t0) * 1e3
    return backend, once


def measure(onnx: str, input_cfg: InputConfig, threads: int, frame: np.ndarray, n: int, warmup: int,
            reliability: str, bare: Callable[[], float], timeout_s: float = 120.0
            ) -> tuple[list[float], list[float], dict[str, float], int]:
    """Interleaved bare/node frames: (bare ms, node end-to-end ms, node stage medians, resent frames)."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image

    from evit_ros.ros import conversions as conv
    from evit_ros.ros.bag_player import stop_node_process

    cmd = [sys.executable, '-m', 'evit_ros.ros.segmentation_node', '--ros-args',
           '--log-level', os.environ.get('EVIT_BENCH_LOG', 'warn'), '-p', f'qos.input_reliability:={reliability}',
           '-p', 'backend.type:=onnxruntime', '-p', f'backend.onnx_path:={onnx}', '-p', f'backend.threads:={threads}',
           '-p', 'backend.precision:=fp32', '-p', f'input.height:={input_cfg.height}',
           '-p', f'input.width:={input_cfg.width}', '-p', 'diagnostics.latency_budget_ms:=60000.0']
    proc = subprocess.Popen(cmd, env=os.environ.copy())
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node('evit_bench_node', context=ctx)
    arrived: dict[int, float] = {}
    diag: dict[str, float] = {}
    cond = threading.Condition()

    def on_mask(msg: Any) -> None:
        t = time.perf_counter()
        with cond:
            arrived[conv.stamp_to_ns(msg.header.stamp)] = t
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

    node.create_subscription(Image, '/segmentation/front/mask', on_mask, QoSProfile(depth=5))
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, QoSProfile(depth=5))
    pub = node.create_publisher(Image, '/front/image_raw', QoSProfile(depth=1))
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    msg = conv.numpy_to_image(frame, 'rgb8')
    msg.header.frame_id = 'front_optical'
    bare_ms: list[float] = []
    node_ms: list[float] = []
    resends = 0
    try:
        deadline = time.monotonic() + timeout_s
        while not (pub.get_subscription_count() > 0 and node.count_publishers('/segmentation/front/mask') > 0):
            if proc.poll() is not None:
                raise EvitError(f'the node exited with code {proc.returncode} during startup; see its log above')
            if time.monotonic() > deadline:
                raise EvitError(f'the node did not come up within {timeout_s:.0f} s')
            time.sleep(0.05)
        time.sleep(0.5)   # let the node see our mask subscription
        for i in range(warmup + n):
            b = bare()
            time.sleep(0.02)
            got = None
            for _ in range(10):       # best-effort input: a lost frame is resent (and counted)
                msg.header.stamp = node.get_clock().now().to_msg()
                key = conv.stamp_to_ns(msg.header.stamp)
                t_pub = time.perf_counter()
                pub.publish(msg)
                with cond:
                    cond.wait_for(partial(arrived.__contains__, key), timeout=5.0)
                    got = arrived.get(key)
                if got is not None:
                    break
                resends += 1
            if got is None:
                raise EvitError(f'no mask for frame {i} after 10 attempts: the frames do not reach the node '
                                '(try --transport shm-large or --input-reliability reliable)')
            if i >= warmup:
                bare_ms.append(b)
                node_ms.append((got - t_pub) * 1e3)
            time.sleep(0.02)
        time.sleep(1.2)   # one more diagnostics report with every frame in it
        with cond:
            stages = dict(diag)
    finally:
        stop_node_process(proc)
        executor.shutdown(timeout_sec=1.0)
        spin.join(timeout=2.0)
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    return bare_ms, node_ms, stages, resends


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, float)
    return {'p50': float(np.median(a)), 'p95': float(np.percentile(a, 95)), 'min': float(a.min()),
            'max': float(a.max()), 'mean': float(a.mean()), 'n': int(a.size)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both measurements and the ratio as a JSON-ready dict."""
    input_cfg = InputConfig(height=args.height, width=args.width)
    cam_h, cam_w = args.camera_height, args.camera_width
    if cam_h < 32 or cam_w < 32:
        raise ConfigError(f'--camera-height/--camera-width {cam_h}x{cam_w} must be at least 32')
    if args.transport == 'shm-large':
        if not LARGE_FRAMES_PROFILE.is_file():
            raise ConfigError(f'{LARGE_FRAMES_PROFILE} is missing; run from the source checkout '
                              'or use --transport default')
        os.environ['FASTRTPS_DEFAULT_PROFILES_FILE'] = str(LARGE_FRAMES_PROFILE)
    frame = _frame(cam_h, cam_w)
    backend, bare = bare_runner(args.onnx, input_cfg, args.threads, frame)
    try:
        onnx = str(getattr(backend, 'onnx_path', args.onnx))
        bare_ms, node_ms, stages, resends = measure(onnx, input_cfg, args.threads, frame, args.frames, args.warmup,
                                                    args.input_reliability, bare)
    finally:
        backend.close()
    b, e = _stats(bare_ms), _stats(node_ms)
    ratio = e['p50'] / b['p50']
    return {
        'model': ModelConfig().name, 'backend': 'onnxruntime', 'device': 'cpu', 'onnx': onnx,
        'threads': args.threads, 'input_hw': [args.height, args.width], 'camera_hw': [cam_h, cam_w],
        'encoding': 'rgb8', 'input_reliability': args.input_reliability, 'transport': args.transport,
        'frames': args.frames, 'bare_infer_ms': b, 'node_end_to_end_ms': e, 'node_stage_p50_ms': stages,
        'resends': resends, 'ratio_p50': ratio, 'target_ratio': 1.2, 'meets_target': bool(ratio <= 1.2),
        'cpu_count': os.cpu_count(), 'load_average_1min': os.getloadavg()[0],
        'bare_samples_ms': bare_ms, 'node_samples_ms': node_ms,
    }


def table(res: dict[str, Any]) -> str:
    b, e = res['bare_infer_ms'], res['node_end_to_end_ms']
    cam, inp = res['camera_hw'], res['input_hw']
    lines = [f"node overhead: {res['model']} onnxruntime CPU, camera {cam[0]}x{cam[1]} {res['encoding']} "
             f"({res['input_reliability']}, transport {res['transport']}) -> input {inp[0]}x{inp[1]}, "
             f"{res['frames']} frames, load {res['load_average_1min']:.2f}",
             '| measurement | p50 ms | p95 ms | min ms | max ms |', '|---|---:|---:|---:|---:|']
    for name, s in (('bare backend.infer', b), ('node end-to-end (DDS publish -> mask received)', e)):
        lines.append(f"| {name} | {s['p50']:.1f} | {s['p95']:.1f} | {s['min']:.1f} | {s['max']:.1f} |")
    if res['node_stage_p50_ms']:
        lines.append('node stages p50 (ms): ' + ', '.join(f'{k} {v:.1f}' for k, v in res['node_stage_p50_ms'].items()))
    lines.append(f"ratio (p50) = {res['ratio_p50']:.3f}  (target <= {res['target_ratio']}: "
                 f"{'met' if res['meets_target'] else 'NOT met'}); resent frames: {res['resends']}")
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m evit_ros.ros.bench_node', description=__doc__.split('\n\n')[0])
    p.add_argument('--json', default='', help='write the results to this JSON file')
    p.add_argument('--frames', type=int, default=20, help='measured frames (default 20)')
    p.add_argument('--warmup', type=int, default=3, help='unmeasured frames first (default 3)')
    p.add_argument('--height', type=int, default=512, help='network input height (default 512)')
    p.add_argument('--width', type=int, default=1024, help='network input width (default 1024)')
    p.add_argument('--camera-height', type=int, default=1024, help='camera frame height (default 1024)')
    p.add_argument('--camera-width', type=int, default=2048, help='camera frame width (default 2048)')
    p.add_argument('--threads', type=int, default=0, help='ONNX Runtime threads, 0: default (all cores)')
    p.add_argument('--input-reliability', choices=('best_effort', 'reliable'), default='best_effort',
                   help='qos.input_reliability of the node (default best_effort, as shipped)')
    p.add_argument('--transport', choices=('shm-large', 'default'), default='shm-large',
                   help='Fast DDS transport (default shm-large; see the module docstring)')
    p.add_argument('--onnx', default='', help='exported ONNX; default: the backend exports b0 to its cache')
    args = p.parse_args(argv)
    if args.frames < 1 or args.warmup < 0:
        p.error('--frames must be >= 1 and --warmup >= 0')
    try:
        res = run(args)
    except EvitError as exc:
        sys.stderr.write(f'bench_node: {exc}\n')
        return 2
    sys.stdout.write(table(res) + '\n')
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
        sys.stdout.write(f'wrote {args.json}\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
