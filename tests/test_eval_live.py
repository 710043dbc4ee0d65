"""``eval --live``: the bag player over real DDS (rclpy), against a stand-in node and, when present, the real node."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy')

from eval_support import export_tiny_onnx, scene, write_bag  # noqa: E402

from evit_ros.ros.bag_player import run_live, stop_node_process  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000_000_000_000
IMG, LAB = '/front/image_raw', '/front/labels'


def _bag(tmp_path: Path, n: int = 8) -> Path:
    frames = []
    for i in range(n):
        rgb = scene(i)
        st, log = T0 + i * 100_000_000, T0 + i * 100_000_000
        label = np.minimum(rgb[..., 0] // 10, 18).astype(np.uint8)
        if i == 0:
            label[:4, :8] = 11          # a person the stand-in cannot see
        frames += [{'topic': IMG, 'stamp': st, 'rgb': rgb, 'log': log},
                   {'topic': LAB, 'stamp': st, 'label': label, 'log': log + 1}]
    return write_bag(tmp_path / 'bag', frames)


def test_live_player_scores_a_node_over_dds(tmp_path) -> None:
    bag = _bag(tmp_path)
    proc = subprocess.Popen([sys.executable, str(REPO / 'tests' / 'eval_support.py')],
                            env={**__import__('os').environ, 'PYTHONPATH': str(REPO)})
    try:
        st = run_live(str(bag), image_topics=(IMG,), label_topics=(LAB,), rate=2.0, node_timeout_s=30,
                      progress=False, settle_s=3.0)
    finally:
        stop_node_process(proc)
    c = st.counters
    assert c['frames'] == 8
    assert c['frames_received'] + c['dropped'] == 8
    assert c['frames_received'] >= 6          # best-effort input depth 1: a drop under load is reported, not hidden
    assert st.latency.summary()['end_to_end']['count'] == c['frames_received']
    assert c['frames_scored'] == c['frames_received']
    iou = st.cm.iou()
    n = c['frames_scored']
    if n == 8:     # frame 0 (with the person) received: exactly its 32 pixels are wrong
        assert iou[11] == 0.0
        assert st.cm.pixel_accuracy() == pytest.approx((8 * 48 * 64 - 32) / (8 * 48 * 64))
    else:
        assert st.cm.pixel_accuracy() >= (n * 48 * 64 - 32) / (n * 48 * 64)


def test_live_with_the_real_node(tmp_path) -> None:
    if not (REPO / 'evit_ros' / 'ros' / 'segmentation_node.py').exists():
        pytest.skip('evit_ros/ros/segmentation_node.py (the node) does not exist yet')
    onnx = export_tiny_onnx(tmp_path / 'b0.onnx', 64, 128)
    frames = []
    for i in range(6):
        rgb = np.zeros((48, 64, 3), np.uint8)
        rgb[24:] = (i * 40) % 255
        st = T0 + i * 200_000_000
        frames.append({'topic': IMG, 'stamp': st, 'rgb': rgb, 'log': st})
    bag = write_bag(tmp_path / 'bag', frames)
    st = run_live(str(bag), image_topics=(IMG,), rate=1.0, start_node=True, node_timeout_s=60, progress=False,
                  node_params={'backend.type': 'onnxruntime', 'backend.onnx_path': str(onnx), 'input.height': 64,
                               'input.width': 128, 'outputs.mask_resolution': 'camera'})
    c = st.counters
    assert c['frames'] == 6 and c['frames_received'] + c['dropped'] == 6
    assert c['frames_received'] >= 1
    assert st.latency.summary()['end_to_end']['count'] == c['frames_received']
