"""`evit-ros demo` end to end: real node process, real DDS, real ONNX Runtime, a bag written by the test."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def test_demo_parser_defaults() -> None:
    from evit_ros.cli.main import build_parser

    args = build_parser(['demo']).parse_args(['demo'])
    assert args.out == 'demo_out' and args.params_file == 'config/demo.yaml' and args.frames == 40


def test_demo_config_matches_the_synthetic_rig() -> None:
    from evit_ros.config import load_config
    from evit_ros.synthetic.bag import DEMO_CAMERA, DEMO_CAMERAS

    cfg = load_config(REPO / 'config' / 'demo.yaml')
    assert [c.name for c in cfg.cameras] == [c.name for c in DEMO_CAMERAS]
    for cam, spec in zip(cfg.cameras, DEMO_CAMERAS, strict=True):
        assert cam.subscribed_topic == spec.image_topic
        assert cam.transport == spec.transport
        assert cam.camera_info_topic == spec.info_topic
        assert cam.mount.pitch_deg == pytest.approx(DEMO_CAMERA.pitch_deg(cfg.input.height, cfg.input.width), abs=0.01)
        assert cam.mount.height_m == DEMO_CAMERA.height_m
    assert cfg.backend.type == 'onnxruntime'
    assert Path(REPO / cfg.model.checkpoint).is_file()


@pytest.mark.skipif(not (_have('evit_ros.ros.segmentation_node') and _have('evit_ros.ros.bag_player')
                         and _have('evit_ros.eval')), reason='node, live player or evaluator not present')
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / 'demo_out'
    proc = subprocess.run([sys.executable, '-m', 'evit_ros', 'demo', '--out', str(out), '--frames', '6'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'mIoU' in proc.stdout
    assert f'ROS_DOMAIN_ID {os.environ["ROS_DOMAIN_ID"]},' in proc.stdout   # the user's domain, not a made-up one
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['frames_out'] > 0
    assert summary['miou'] >= 0.8
    assert (out / 'report.md').is_file()
    report = json.loads((out / 'report.json').read_text())
    assert report['meta']['input'] == '256x512' and report['meta']['source'] == 'node'   # HxW, from the node
    assert report['meta']['backend'] == 'onnxruntime'
    assert summary['overlays'] and all(Path(p).is_file() for p in summary['overlays'])
    import cv2
    # what the README shows: its picture is the demo's, at camera size, and the overlays are camera size too
    picture, readme_picture = cv2.imread(summary['picture']), cv2.imread(str(REPO / 'docs' / 'demo_overlay.png'))
    assert picture.shape == readme_picture.shape == (2 * 256 + 4, 2 * 512 + 4, 3)
    assert cv2.imread(summary['overlays'][0]).shape == (256, 512, 3)
    assert summary['weights'].startswith('demo weights (synthetic scenes only)')
    assert 'demo weights (synthetic scenes only)' in (out / 'report.md').read_text()
    # a first demo is clean: no warning from the tools or the node (e.g. about the head the demo exports)
    node_log = (out / 'node.log').read_text()
    for text in (proc.stdout, proc.stderr, node_log):
        assert '[WARN' not in text and 'WARNING' not in text, text[-3000:]
    for field in ('masks', 'dropped', 'frames/s', 'latency ms', 'weights'):
        assert f'  {field}' in proc.stdout          # every summary field is printed with its definition
    samples = cv2.imread(str(out / 'samples.png'))
    assert samples is not None and samples.shape[1] >= 600
    assert samples.reshape(-1, 3).std(axis=0).max() > 30      # image | ground truth | prediction, not blank


def test_demo_domain_id_honours_ros_domain_id() -> None:
    from evit_ros.cli.demo_cmd import choose_domain_id
    assert choose_domain_id(0, {'ROS_DOMAIN_ID': '42'}) == 42
    assert choose_domain_id(7, {'ROS_DOMAIN_ID': '42'}) == 7           # --domain-id wins
    assert 100 <= choose_domain_id(0, {}) < 200
    with pytest.raises(ValueError, match='ROS_DOMAIN_ID'):
        choose_domain_id(0, {'ROS_DOMAIN_ID': 'abc'})
