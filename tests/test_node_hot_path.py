"""The node's per-frame hot path (issue 17): same outputs as the previous path, zero-copy payloads, and the
node benchmark (with the plain-node baseline and the publish floor) runs and reports every key.

Previous path = the ``labels+confidence`` head with everything computed at the output (camera) size; new path =
the ``labels+logits`` head (confidence from the 1/8 logits, only when asked), the two-phase Segmenter, and
fractions/boundary at the model size when the camera is an integer multiple of it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evit_ros.backends import SYNTHETIC_CHECKPOINT, create_backend
from evit_ros.config import BackendConfig, DrivableConfig, InputConfig, ModelConfig, OutputConfig
from evit_ros.datasets import CITYSCAPES
from evit_ros.pipeline import Segmenter
from evit_ros.pipeline.drivable import class_fractions, freespace_boundary
from evit_ros.pipeline.postprocess import labels_to_source
from evit_ros.synthetic.scenes import generate_scene
from evit_ros.synthetic.train import HELDOUT_SEED_BASE

pytest.importorskip('onnxruntime')
pytest.importorskip('torch')

REPO = Path(__file__).resolve().parents[1]
INPUT = InputConfig(height=128, width=256)


@pytest.fixture(scope='module')
def segmenters():
    made = {}
    for head in ('labels+confidence', 'labels+logits'):
        be = create_backend(BackendConfig(type='onnxruntime', threads=1), model=ModelConfig(
            checkpoint=str(SYNTHETIC_CHECKPOINT)), input_cfg=INPUT, head=head)
        be.load()
        made[head] = Segmenter(be, input_cfg=INPUT, outputs=OutputConfig(), drivable=DrivableConfig(
            groups=(('drivable', ('road',)), ('walkable', ('sidewalk',)))), dataset=CITYSCAPES)
    yield made
    for s in made.values():
        s.backend.close()


@pytest.mark.parametrize('cam_hw', [(256, 512), (200, 330)])   # integer 2x (model-size fast path), and not
def test_new_path_matches_previous_path_on_heldout_frames(segmenters, cam_hw) -> None:
    old, new = segmenters['labels+confidence'], segmenters['labels+logits']
    agree, conf_diff = [], []
    for i in range(4):
        frame = generate_scene(HELDOUT_SEED_BASE + 17 * i, *cam_hw)[0]
        ref = old.process([frame], want_color=True, want_overlay=True, want_confidence=True)[0]
        ref_labels, ref_conf = ref.labels.copy(), ref.confidence.copy()
        ref_color, ref_overlay = ref.color.copy(), ref.overlay.copy()
        # the previous path computed everything at the camera size
        ref_groups = {g: (m.mask.copy(), m.fraction, freespace_boundary(m.mask).copy()) for g, m in ref.groups.items()}
        ref_fractions = class_fractions(ref_labels, CITYSCAPES.num_classes)

        fr = new.run_labels([frame], want_confidence=True)[0]
        np.testing.assert_array_equal(fr.labels, ref_labels)          # mask ready before anything else
        agree.append(float((fr.labels == ref_labels).mean()))
        new.derive(fr, want_color=True, want_overlay=True, group_masks={'drivable'})
        np.testing.assert_array_equal(fr.color, ref_color)
        np.testing.assert_array_equal(fr.overlay, ref_overlay)
        np.testing.assert_allclose(fr.class_fractions, ref_fractions, rtol=0, atol=1e-12)
        for g, (mask, frac, boundary) in ref_groups.items():
            got = fr.groups[g]
            assert got.fraction == pytest.approx(frac, abs=1e-12)
            np.testing.assert_array_equal(got.boundary_rows, boundary)
            if got.mask is not None:
                np.testing.assert_array_equal(got.mask, mask)
        if cam_hw == (256, 512):
            assert fr.groups['walkable'].mask is None          # nobody asked for it: never computed full size
        else:
            assert fr.groups['walkable'].mask is not None      # not an integer scale: computed at the camera size
        conf_diff.append(float(np.abs(fr.confidence.astype(int) - ref_conf.astype(int)).mean()))
    print(f'camera {cam_hw}: label agreement with the previous path {min(agree):.6f} (min over frames); '
          f'confidence from 1/8 logits vs full-size exact: mean |diff| {max(conf_diff):.1f}/255')
    assert min(agree) == 1.0
    assert max(conf_diff) < 20.0      # bilinear 1/8 confidence differs at class boundaries only


def test_confidence_only_when_asked(segmenters) -> None:
    seg = segmenters['labels+logits']
    frame = generate_scene(HELDOUT_SEED_BASE + 3, 256, 512)[0]
    a, b = seg.run_labels([frame, frame], want_confidence=[True, False])
    assert a.confidence is not None and b.confidence is None
    assert not seg.engine_confidence and segmenters['labels+confidence'].engine_confidence


def test_fractions_and_groups_only_when_asked(segmenters) -> None:
    seg = segmenters['labels+logits']
    frame = generate_scene(HELDOUT_SEED_BASE + 7, 256, 512)[0]
    full = seg.derive(seg.run_labels([frame])[0], want_color=False)
    fractions = full.class_fractions.copy()
    walkable = full.groups['walkable'].boundary_rows.copy()
    fr = seg.derive(seg.run_labels([frame])[0], want_color=False, group_masks=False, want_fractions=False,
                    compute_groups={'walkable'})
    assert fr.class_fractions is None and set(fr.groups) == {'walkable'}
    np.testing.assert_array_equal(fr.groups['walkable'].boundary_rows, walkable)
    fr = seg.derive(seg.run_labels([frame])[0], want_color=False, group_masks={'drivable'}, want_fractions=False,
                    compute_groups=False)
    assert set(fr.groups) == {'drivable'}                      # a wanted mask is always computed
    fr = seg.derive(seg.run_labels([frame])[0], want_color=False)
    np.testing.assert_array_equal(fr.class_fractions, fractions)


def test_message_payload_is_the_pipeline_buffer(segmenters) -> None:
    pytest.importorskip('sensor_msgs')
    from evit_ros.ros import conversions as conv
    seg = segmenters['labels+logits']
    frame = generate_scene(HELDOUT_SEED_BASE + 5, 256, 512)[0]
    fr = seg.run_labels([frame])[0]
    seg.derive(fr, want_color=True)
    for arr, enc in ((fr.labels, 'mono8'), (fr.color, 'rgb8')):
        msg = conv.numpy_to_image(arr, enc, share=True)
        assert msg.data is conv.backing_array(arr)                # no copy before publish
        np.testing.assert_array_equal(conv.image_to_numpy(msg), arr)
        copied = conv.numpy_to_image(arr, enc)                    # default: an independent copy
        assert copied.data is not conv.backing_array(arr)
    assert conv.backing_array(fr.labels[1:]) is None              # views are never shared


def test_labels_to_source_unchanged_by_shared_buffers(segmenters) -> None:
    seg = segmenters['labels+logits']
    frame = generate_scene(HELDOUT_SEED_BASE + 9, 256, 512)[0]
    fr = seg.run_labels([frame])[0]
    np.testing.assert_array_equal(fr.labels, labels_to_source(fr.labels_model, fr.plan))


def test_bench_node_runs_with_every_output_and_the_baselines(tmp_path) -> None:
    pytest.importorskip('rclpy')
    out = tmp_path / 'node_bench.json'
    env = dict(os.environ, PYTHONPATH=f'{REPO}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
    proc = subprocess.run([sys.executable, '-m', 'evit_ros.bench.node', '--frames', '3', '--warmup', '1',
                           '--height', '128', '--width', '256', '--camera-height', '256', '--camera-width', '512',
                           '--threads', '1', '--subscribe', 'all', '--json', str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    print(proc.stdout)
    res = json.loads(out.read_text())
    for key in ('ratio_p50', 'host_ms_p50', 'memcpy_ms', 'plain_node_ratio', 'publish_floor_ms', 'mask_ratio_p50',
                'decode_ms_p50', 'preprocess_ms_p50', 'infer_ms_p50', 'postprocess_ms_p50', 'publish_ms_p50',
                'end_to_end_ms_p50', 'load_average', 'transport_floor_ms', 'ratio_floor_p50', 'mask_ratio_floor_p50',
                'overhead_beyond_floor_ms'):
        assert key in res, key
    for key in ('ratio_p50', 'host_ms_p50', 'memcpy_ms', 'plain_node_ratio', 'publish_floor_ms', 'transport_floor_ms'):
        assert np.isfinite(res[key]) and res[key] > 0, (key, res[key])
    # the no-work node's mask arrives no later than its last output, and the floor ratio is what that costs
    assert res['echo_node_mask_end_to_end_ms']['p50'] <= res['transport_floor_ms']
    assert res['ratio_floor_p50'] == pytest.approx(
        (res['bare_infer_ms']['p50'] + res['transport_floor_ms']) / res['bare_infer_ms']['p50'])
    assert np.isfinite(res['overhead_beyond_floor_ms'])
    assert res['subscribe'] == 'all' and len(res['node_samples_ms']) == 3 == len(res['plain_samples_ms'])
    assert len(res['echo_samples_ms']) == 3
    assert '/segmentation/front/drivable/drivable/grid' in res['outputs']
    # every output of every measured frame arrived, so the last one is no earlier than the mask
    assert res['node_end_to_end_ms']['p50'] >= res['node_mask_end_to_end_ms']['p50']
    assert 'ratio_p50' in proc.stdout and 'plain_node_ratio' in proc.stdout and 'echo node' in proc.stdout


class _Pub:
    """A publisher with a fixed subscriber count that keeps what it is given."""

    def __init__(self, subscribed: bool) -> None:
        self.subscribed, self.sent = subscribed, []

    def get_subscription_count(self) -> int:
        return int(self.subscribed)

    def publish(self, msg) -> None:
        self.sent.append(msg)


def test_output_stage_counts_fractions_once_per_report_and_keeps_subscribed_groups(segmenters) -> None:
    """The node's output stage: class fractions (and groups no output needs) once per diagnostics report;
    a group whose boundary is subscribed is computed and published for every frame."""
    pytest.importorskip('sensor_msgs')
    import threading

    from evit_ros.config import CameraConfig, DiagnosticsConfig, MountConfig, NodeConfig
    from evit_ros.ros import conversions as conv
    from evit_ros.ros.diagnostics import CameraStats
    from evit_ros.ros.outputs import OutputStage
    from evit_ros.ros.worker import Camera

    seg = segmenters['labels+logits']            # groups: drivable (road), walkable (sidewalk)
    cam_cfg = CameraConfig('front', camera_info_topic='/front/camera_info', mount=MountConfig(pitch_deg=5.0))
    cfg = NodeConfig(cameras=(cam_cfg,))
    cam = Camera(cam_cfg, CameraStats('front', '/front/image_raw', CITYSCAPES.class_names))
    cam.pubs = {k: _Pub(k == 'mask') for k in ('mask', 'color_mask', 'overlay', 'confidence')}
    cam.group_pubs = {g: {k: _Pub(g == 'walkable' and k == 'boundary') for k in ('mask', 'grid', 'boundary')}
                      for g in ('drivable', 'walkable')}
    h, w = 256, 512
    cam.info = ((256.0, 0.0, (w - 1) / 2, 0.0, 256.0, (h - 1) / 2, 0.0, 0.0, 1.0), h, w)

    class _Engine:
        def on_batch(self, n, timings) -> None:
            pass

    stage = OutputStage(seg, threading.Event())
    seen = []

    def record(cam, msg, res, timings) -> None:
        seen.append((res.class_fractions is not None, set(res.groups)))
        cam.stats.on_result(timings, res.class_fractions, {g: (r.fraction, r.roi_fraction)
                                                           for g, r in res.groups.items()})

    frame = generate_scene(HELDOUT_SEED_BASE + 11, h, w)[0]
    msg = conv.numpy_to_image(frame, 'rgb8')
    for i in range(3):
        if i == 2:
            cam.stats.status('evit_segmentation', DiagnosticsConfig())    # a report went out
        stage.run([cam], [msg], [frame], [0.1], cfg, _Engine(), record)
    assert seen == [(True, {'drivable', 'walkable'}), (False, {'walkable'}), (True, {'drivable', 'walkable'})]
    assert len(cam.pubs['mask'].sent) == 3 and len(cam.group_pubs['walkable']['boundary'].sent) == 3
    assert not cam.pubs['color_mask'].sent and not cam.group_pubs['drivable']['grid'].sent
    assert 'drivable' in cam.stats.groups                 # the report keeps the last full frame's group
