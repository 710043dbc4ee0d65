"""Reference processes for ``python -m evit_ros.bench.node`` (not part of the node).

* ``plain``: a segmentation node written the usual way, as a point of comparison: everything in the
  subscription callback; float32 NCHW input normalized in numpy; ONNX Runtime runs the same network
  (1/8 logits, same weights and thread count); the logits are upsampled to full (network input)
  resolution on the host (``cv2.resize`` bicubic over all classes); numpy argmax and softmax; labels
  resized to the camera; the color mask built by a loop over classes; the overlay blended in numpy;
  messages filled from ``tobytes()``.
* ``floor``: the publish floor: the messages the node publishes for one frame, pre-built once, published
  in a plain rclpy loop to the benchmark's subscribers (with the node's heap settings); prints the
  per-round publish times as JSON.
* ``echo``: the transport floor: a node that does no work. It subscribes to the camera like the node
  (best effort, and the node's heap settings, :func:`evit_ros.heap.keep_frame_buffers`) and answers every
  frame with the same pre-built messages stamped with the frame's stamp; its end-to-end time is what moving
  the frame in and the outputs out costs on this machine.

Run only by the benchmark: ``python -m evit_ros.bench.node_baselines plain|floor|echo ...``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from evit_ros.contract import IMAGENET_MEAN, IMAGENET_STD

PLAIN_NS = '/plain'
ECHO_NS = '/echo'
FLOOR_NS = '/floor'
IMAGE_OUTPUTS = ('mask', 'color_mask', 'overlay', 'confidence')


def _palette() -> np.ndarray:
    from evit_ros.datasets import CITYSCAPES
    return np.array(CITYSCAPES.colors, np.uint8)


class PlainSegmentationNode:
    """See the module docstring; ``outputs`` is the list of image outputs it computes and publishes."""

    def __init__(self, node: Any, onnx: str, threads: int, outputs: list[str], alpha: float = 0.5) -> None:
        import onnxruntime as ort
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        so = ort.SessionOptions()
        if threads > 0:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(onnx, so, providers=['CPUExecutionProvider'])
        inp = self.sess.get_inputs()[0]
        self.in_name = inp.name
        self.h, self.w = int(inp.shape[2]), int(inp.shape[3])
        self.mean = np.array(IMAGENET_MEAN, np.float32)
        self.std = np.array(IMAGENET_STD, np.float32)
        self.colors = _palette()
        self.alpha = alpha
        self.outputs = outputs
        self.node = node
        self.Image = Image
        self.pubs = {o: node.create_publisher(Image, f'{PLAIN_NS}/{o}', 1) for o in outputs}
        node.create_subscription(Image, f'{PLAIN_NS}/image_raw', self.callback,
                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))

    def _msg(self, arr: np.ndarray, encoding: str, header: Any) -> Any:
        msg = self.Image()
        msg.header = header
        msg.height, msg.width = arr.shape[:2]
        msg.encoding = encoding
        msg.step = arr.shape[1] * (3 if arr.ndim == 3 else 1)
        msg.data.frombytes(arr.tobytes())   # what cv_bridge's cv2_to_imgmsg does
        return msg

    def callback(self, msg: Any) -> None:
        import cv2
        img = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
        small = cv2.resize(img, (self.w, self.h), interpolation=cv2.INTER_LINEAR)
        x = ((small.astype(np.float32) / 255.0 - self.mean) / self.std).transpose(2, 0, 1)[None]
        logits = self.sess.run(None, {self.in_name: np.ascontiguousarray(x, np.float32)})[0][0]   # [C, h/8, w/8]
        full = cv2.resize(logits.transpose(1, 2, 0), (self.w, self.h), interpolation=cv2.INTER_CUBIC)  # [H, W, C]
        labels = np.argmax(full, axis=2).astype(np.uint8)
        labels_cam = cv2.resize(labels, (int(msg.width), int(msg.height)), interpolation=cv2.INTER_NEAREST)
        if 'mask' in self.pubs:
            self.pubs['mask'].publish(self._msg(labels_cam, 'mono8', msg.header))
        if 'confidence' in self.pubs:
            e = np.exp(full - full.max(axis=2, keepdims=True))
            conf = (e.max(axis=2) / e.sum(axis=2) * 255.0).round().astype(np.uint8)
            conf_cam = cv2.resize(conf, (int(msg.width), int(msg.height)), interpolation=cv2.INTER_NEAREST)
            self.pubs['confidence'].publish(self._msg(conf_cam, 'mono8', msg.header))
        if 'color_mask' in self.pubs or 'overlay' in self.pubs:
            color = np.zeros((*labels_cam.shape, 3), np.uint8)
            for c in range(len(self.colors)):
                color[labels_cam == c] = self.colors[c]
            if 'color_mask' in self.pubs:
                self.pubs['color_mask'].publish(self._msg(color, 'rgb8', msg.header))
            if 'overlay' in self.pubs:
                blend = (img.astype(np.float32) * (1 - self.alpha) + color.astype(np.float32) * self.alpha)
                self.pubs['overlay'].publish(self._msg(blend.round().astype(np.uint8), 'rgb8', msg.header))


def floor_messages(camera_hw: tuple[int, int], subscribe: str) -> dict[str, Any]:
    """The node's messages for one frame in ``subscribe`` mode (same types and sizes), built once."""
    from evit_ros.config import GridConfig
    from evit_ros.ros import conversions as conv
    h, w = camera_hw
    rng = np.random.default_rng(0)
    mono = rng.integers(0, 19, (h, w), dtype=np.uint8)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    msgs: dict[str, Any] = {'mask': conv.numpy_to_image(mono, 'mono8')}
    if subscribe == 'all':
        g = GridConfig()
        cells = np.zeros((int(round(g.length_m / g.resolution_m)), int(round(g.width_m / g.resolution_m))), np.int8)
        msgs.update({
            'color_mask': conv.numpy_to_image(rgb, 'rgb8'), 'overlay': conv.numpy_to_image(rgb, 'rgb8'),
            'confidence': conv.numpy_to_image(mono, 'mono8'),
            'drivable/drivable/mask': conv.numpy_to_image(mono, 'mono8'),
            'drivable/drivable/grid': conv.occupancy_grid(cells, resolution=g.resolution_m, origin_xy=(0.0, -10.0),
                                                          frame_id='base_link', stamp=msgs['mask'].header.stamp),
            'drivable/drivable/boundary': conv.polygon_stamped(rng.random((257, 2)), frame_id='base_link',
                                                               stamp=msgs['mask'].header.stamp),
        })
    return msgs


def run_floor(node: Any, camera_hw: tuple[int, int], subscribe: str, rounds: int, timeout_s: float = 60.0) -> None:
    """Publish the pre-built messages ``rounds`` times once every topic has a subscriber; print JSON."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    msgs = floor_messages(camera_hw, subscribe)
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {k: node.create_publisher(type(m), f'{FLOOR_NS}/{k}', qos) for k, m in msgs.items()}
    deadline = time.monotonic() + timeout_s
    while not all(p.get_subscription_count() > 0 for p in pubs.values()):
        if time.monotonic() > deadline:
            raise SystemExit('floor: the benchmark did not subscribe in time')
        time.sleep(0.05)
    time.sleep(0.5)
    times = []
    for _ in range(rounds):
        stamp = node.get_clock().now().to_msg()
        for m in msgs.values():
            m.header.stamp = stamp
        t0 = time.perf_counter()
        for k, p in pubs.items():
            p.publish(msgs[k])
        times.append((time.perf_counter() - t0) * 1e3)
        time.sleep(0.03)
    sys.stdout.write(json.dumps({'publish_ms': times}) + '\n')
    sys.stdout.flush()


class EchoNode:
    """See the module docstring: the pre-built messages of :func:`floor_messages`, sent back per frame."""

    def __init__(self, node: Any, camera_hw: tuple[int, int], subscribe: str) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        self.msgs = floor_messages(camera_hw, subscribe)
        self.pubs = {k: node.create_publisher(type(m), f'{ECHO_NS}/{k}', 1) for k, m in self.msgs.items()}
        node.create_subscription(Image, f'{ECHO_NS}/image_raw', self.callback,
                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))

    def callback(self, msg: Any) -> None:
        for k, p in self.pubs.items():
            out = self.msgs[k]
            out.header.stamp = msg.header.stamp
            p.publish(out)


def main(argv: list[str] | None = None) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    p = argparse.ArgumentParser(prog='python -m evit_ros.bench.node_baselines')
    p.add_argument('mode', choices=('plain', 'floor', 'echo'))
    p.add_argument('--onnx', default='')
    p.add_argument('--threads', type=int, default=0)
    p.add_argument('--subscribe', choices=('mask', 'all'), default='mask')
    p.add_argument('--camera-height', type=int, default=1024)
    p.add_argument('--camera-width', type=int, default=2048)
    p.add_argument('--rounds', type=int, default=20)
    args = p.parse_args(argv)
    if args.mode in ('floor', 'echo'):   # the floors get the node's heap settings; the plain node stays plain
        from evit_ros.heap import keep_frame_buffers
        keep_frame_buffers()
    rclpy.init()
    node = rclpy.create_node(f'evit_bench_{args.mode}')
    try:
        if args.mode == 'floor':
            run_floor(node, (args.camera_height, args.camera_width), args.subscribe, args.rounds)
            return 0
        if args.mode == 'echo':
            EchoNode(node, (args.camera_height, args.camera_width), args.subscribe)
        else:
            PlainSegmentationNode(node, args.onnx, args.threads,
                                  ['mask'] if args.subscribe == 'mask' else list(IMAGE_OUTPUTS))
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        except Exception:  # noqa: BLE001 - stopped by SIGINT/SIGTERM from the benchmark
            pass
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    sys.exit(main())
