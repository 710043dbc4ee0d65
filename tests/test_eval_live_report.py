"""``eval --live`` reports: dropped frames are 'dropped' (not label problems), the header shows what the node runs.

Real DDS (rclpy), a real node process (ONNX Runtime) and a stand-in node that deterministically drops frames.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip('rclpy')

from eval_support import export_tiny_onnx, scene, write_bag  # noqa: E402

from evit_ros.cli.main import main  # noqa: E402
from evit_ros.ros.bag_player import run_live, stop_node_process  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000_000_000_000
IMG, LAB = '/front/image_raw', '/front/labels'

# answers even frames only (stamp in 100 ms steps): frames 1, 3, 5, 7 are dropped, every time
DROPPING_NODE = textwrap.dedent('''
    import numpy as np, rclpy
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node('dropping_echo')
    pub = node.create_publisher(Image, '/segmentation/front/mask', QoSProfile(depth=10))
    def cb(msg):
        if (msg.header.stamp.nanosec // 100_000_000) % 2:
            return
        rgb = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
        out = Image(header=msg.header, height=msg.height, width=msg.width, encoding='mono8', step=msg.width)
        out.data = np.minimum(rgb[..., 0] // 10, 18).astype(np.uint8).tobytes()
        pub.publish(out)
    node.create_subscription(Image, '/front/image_raw', cb, QoSProfile(depth=10))
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
''')


def _bag(tmp_path: Path, n: int = 8, h: int = 48, w: int = 64) -> Path:
    frames = []
    for i in range(n):
        rgb = scene(i, h, w)
        st = T0 + i * 100_000_000
        frames += [{'topic': IMG, 'stamp': st, 'rgb': rgb, 'log': st},
                   {'topic': LAB, 'stamp': st, 'label': np.minimum(rgb[..., 0] // 10, 18).astype(np.uint8),
                    'log': st + 1}]
    return write_bag(tmp_path / 'bag', frames)


def test_dropped_frames_are_dropped_not_labels_without_image(tmp_path) -> None:
    bag = _bag(tmp_path)
    proc = subprocess.Popen([sys.executable, '-c', DROPPING_NODE], env={**os.environ, 'PYTHONPATH': str(REPO)})
    try:
        st = run_live(str(bag), image_topics=(IMG,), label_topics=(LAB,), rate=2.0, node_timeout_s=30,
                      progress=False, settle_s=2.0, samples=4)
    finally:
        stop_node_process(proc)
    c = st.counters
    assert c['frames'] == 8 and c['dropped'] == 4 and c['frames_received'] == 4
    assert c['labels_without_image'] == 0 and c['frames_scored'] == 4
    assert st.cm.pixel_accuracy() == 1.0
    full = [s for s in st.samples if s.get('image') and s.get('gt') and s.get('pred')]
    assert full, 'no sample carries image, ground truth and prediction'


def test_live_cli_header_comes_from_the_node_and_reports_drops(tmp_path, capsys) -> None:
    onnx = export_tiny_onnx(tmp_path / 'b0.onnx', 64, 128)
    bag = _bag(tmp_path, n=6)
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'RCUTILS_LOGGING_BUFFERED_STREAM': '0'}
    node = subprocess.Popen([sys.executable, '-m', 'evit_ros.ros.segmentation_node', '--ros-args', '-p',
                             'use_sim_time:=true', '-p', 'backend.type:=onnxruntime', '-p',
                             f'backend.onnx_path:={onnx}', '-p', 'input.height:=64', '-p', 'input.width:=128',
                             '-p', 'outputs.mask_resolution:=camera', '-p', 'backend.threads:=1'], env=env)
    rep = tmp_path / 'rep'
    try:
        # the evaluator's own defaults (no YAML, no sizes) are b0 at 512x1024 with backend auto: the header
        # must show the node's 64x128 and the backend it reports instead
        rc = main(['eval', '--bag', str(bag), '--image-topic', IMG, '--label-topic', LAB, '--live', '--report',
                   str(rep), '--no-progress', '--node-timeout', '90'])
    finally:
        stop_node_process(node)
    out = capsys.readouterr().out
    r = json.loads((rep / 'report.json').read_text())
    assert rc == 0, out
    assert r['meta']['input'] == '64x128' and r['meta']['backend'] == 'onnxruntime'
    assert r['meta']['model'] == 'efficientvit-seg-b0-cityscapes' and r['meta']['source'] == 'node'
    assert f'dropped {r["dropped"]}' in out
    assert 'frames dropped by the node' in (rep / 'report.md').read_text()
    img = cv2.imread(str(rep / 'samples.png'))
    assert img is not None and img.shape[1] >= 600 and img.reshape(-1, 3).std(axis=0).max() > 30
