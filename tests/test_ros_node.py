"""The segmentation node in-process over real DDS (rclpy Jazzy wheels) with the real ONNX Runtime backend.

Two cameras (front: raw rgb8/bgr8, left: compressed JPEG with CameraInfo), a frozen ``/clock`` (the node runs
with ``use_sim_time``, so end-to-end latency is exactly clock - stamp), every output compared with a
Segmenter run on the same decoded frame, diagnostics, live and refused parameter changes, malformed frames.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime')

from node_onnx import needs_onnx_source, node_onnx  # noqa: E402

needs_onnx_source()

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PolygonStamped  # noqa: E402
from nav_msgs.msg import OccupancyGrid  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

from evit_ros.backends import create_backend  # noqa: E402
from evit_ros.config import from_flat  # noqa: E402
from evit_ros.datasets import dataset_for_model  # noqa: E402
from evit_ros.pipeline import GroundProjector, Segmenter, decode_compressed  # noqa: E402
from evit_ros.ros import conversions as conv  # noqa: E402
from evit_ros.ros.diagnostics import STAGES  # noqa: E402
from evit_ros.ros.node import SegmentationNode  # noqa: E402
from evit_ros.synthetic.scenes import CameraModel, generate_scene  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = 'efficientvit-seg-b0-cityscapes'
CLOCK_S = 1000
FRONT_HW, LEFT_HW = (96, 160), (120, 200)
CAM = CameraModel()
OUTPUTS = ('mask', 'color_mask', 'overlay', 'confidence', 'drivable/drivable/mask', 'drivable/walkable/mask')


def export_test_onnx(out_dir: Path) -> Path:
    """b0 with the packaged synthetic-scene weights at 64x128 (labels+confidence), as the backend would export
    (exported here, or beforehand where PyTorch is absent: tests/node_onnx.py)."""
    return node_onnx('b0_64x128.onnx', out_dir)


def wait_for(cond, timeout: float = 10.0, what: str = 'condition') -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f'timed out after {timeout} s waiting for {what}')


class InProcessNode:
    """A SegmentationNode and a tester node in their own context, spun by one executor thread: the harness
    shape of the in-process node tests (subclasses add their publishers and subscribers between the steps)."""

    def _create(self, overrides: list[Parameter], tester_name: str) -> None:
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = SegmentationNode(context=self.ctx, parameter_overrides=overrides)
        self.tester = rclpy.create_node(tester_name, context=self.ctx)

    def _spin(self) -> None:
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.executor.add_node(self.tester)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        if hasattr(self, 'executor'):   # _spin() ran
            self.executor.shutdown(timeout_sec=1.0)
            self.thread.join(timeout=2.0)
        self.node.destroy_node()
        self.tester.destroy_node()
        rclpy.shutdown(context=self.ctx)


class Harness(InProcessNode):
    """The node, a tester node with publishers/subscribers, and one executor spinning both in a thread."""

    def __init__(self, onnx: Path) -> None:
        flat = {
            'backend.type': 'onnxruntime', 'backend.onnx_path': str(onnx), 'backend.threads': 1,
            'input.height': 64, 'input.width': 128,
            'cameras': ['front', 'left'],
            'cameras.left.transport': 'compressed', 'cameras.left.camera_info_topic': '/left/camera_info',
            'cameras.left.mount.height_m': CAM.height_m,
            'cameras.left.mount.pitch_deg': CAM.pitch_deg(*LEFT_HW), 'cameras.left.mount.x_m': 1.0,
            'drivable.groups': ['drivable', 'walkable'], 'drivable.walkable.classes': ['sidewalk'],
            'grid.resolution_m': 0.5, 'grid.length_m': 20.0, 'grid.width_m': 10.0,
            'diagnostics.latency_budget_ms': 10000.0, 'diagnostics.silence_timeout_s': 60.0,
            'qos.output_depth': 5,
        }
        self.flat = flat
        self._create([Parameter(k, value=v) for k, v in flat.items()] + [Parameter('use_sim_time', value=True)],
                     'tester')
        t = self.tester
        self.pubs = {'front': t.create_publisher(Image, '/front/image_raw', 5),
                     'left': t.create_publisher(CompressedImage, '/left/image_raw/compressed', 5)}
        self.info_pub = t.create_publisher(CameraInfo, '/left/camera_info', 5)
        self.clock_pub = t.create_publisher(Clock, '/clock', 5)
        self.lock = threading.Lock()
        self.received: dict[str, list[Any]] = {}
        self.subs: dict[str, Any] = {}
        for cam in ('front', 'left'):
            for out in OUTPUTS:
                self.subscribe(f'/segmentation/{cam}/{out}', Image)
            for g in ('drivable', 'walkable'):
                self.subscribe(f'/segmentation/{cam}/drivable/{g}/grid', OccupancyGrid)
                self.subscribe(f'/segmentation/{cam}/drivable/{g}/boundary', PolygonStamped)
        self.subscribe('/diagnostics', DiagnosticArray)
        self.param_client = t.create_client(SetParameters, '/evit_segmentation/set_parameters')
        self._spin()
        wait_for(lambda: all(p.get_subscription_count() > 0 for p in self.pubs.values()), what='node subscriptions')
        wait_for(lambda: all(p.get_subscription_count() > 0 for c in self.node.cameras.values()
                             for k, p in c.pubs.items() if not k.endswith('/compressed')), what='output subscribers')
        wait_for(lambda: self.info_pub.get_subscription_count() > 0, what='camera_info subscription')
        self.set_clock(CLOCK_S)

    def subscribe(self, topic: str, msg_type: Any) -> None:
        def cb(msg: Any) -> None:
            with self.lock:
                self.received.setdefault(topic, []).append(msg)
        self.subs[topic] = self.tester.create_subscription(msg_type, topic, cb, QoSProfile(depth=20))

    def unsubscribe(self, topic: str) -> None:
        self.tester.destroy_subscription(self.subs.pop(topic))

    def set_clock(self, sec: int) -> None:
        def at_time() -> bool:
            self.clock_pub.publish(Clock(clock=Time(sec=sec)))
            return self.node.get_clock().now().nanoseconds == sec * 1_000_000_000
        wait_for(at_time, what='/clock to reach the node')

    def by_stamp(self, topic: str, stamp: Time) -> Any:
        with self.lock:
            for m in self.received.get(topic, []):
                if m.header.stamp == stamp:
                    return m
        return None

    def send(self, cam: str, msg: Any, topics: list[str], timeout: float = 15.0) -> dict[str, Any]:
        """Publish (again every 2 s: best-effort input) until every topic has an output with this stamp."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pubs[cam].publish(msg)
            resend = time.monotonic() + 2.0
            while time.monotonic() < min(resend, deadline):
                got = {t: self.by_stamp(t, msg.header.stamp) for t in topics}
                if all(v is not None for v in got.values()):
                    return got
                time.sleep(0.01)
        missing = [t for t in topics if self.by_stamp(t, msg.header.stamp) is None]
        raise AssertionError(f'no output on {missing} for stamp {msg.header.stamp}')

    def set_params(self, **values: Any) -> Any:
        wait_for(lambda: self.param_client.service_is_ready(), what='set_parameters service')
        req = SetParameters.Request()
        for name, v in values.items():
            name = name.replace('__', '.')
            pv = ParameterValue()
            if isinstance(v, float):
                pv.type, pv.double_value = ParameterType.PARAMETER_DOUBLE, v
            elif isinstance(v, int):
                pv.type, pv.integer_value = ParameterType.PARAMETER_INTEGER, v
            else:
                pv.type, pv.string_value = ParameterType.PARAMETER_STRING, v
            req.parameters.append(ParameterMsg(name=name, value=pv))
        fut = self.param_client.call_async(req)
        wait_for(fut.done, what='set_parameters response')
        return fut.result().results


@pytest.fixture(scope='module')
def h(tmp_path_factory):
    onnx = export_test_onnx(tmp_path_factory.mktemp('onnx'))
    harness = Harness(onnx)
    yield harness
    harness.close()


@pytest.fixture(scope='module')
def reference(h):
    """A second, independent backend + Segmenter with the node's configuration."""
    cfg = from_flat(h.flat)
    backend = create_backend(cfg.backend, model=cfg.model, input_cfg=cfg.input, head='labels+confidence')
    backend.load()
    seg = Segmenter(backend, input_cfg=cfg.input, outputs=cfg.outputs, drivable=cfg.drivable,
                    dataset=dataset_for_model(MODEL))
    yield seg
    backend.close()


def _stamp(ms: int) -> Time:
    ns = (CLOCK_S * 1000 - ms) * 1_000_000
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _raw(rgb: np.ndarray, stamp: Time, frame_id: str = 'front_optical', encoding: str = 'rgb8') -> Image:
    arr = rgb if encoding == 'rgb8' else np.ascontiguousarray(rgb[..., ::-1])
    msg = conv.numpy_to_image(arr, 'rgb8' if encoding == 'rgb8' else 'bgr8')
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    return msg


def _jpeg(rgb: np.ndarray, stamp: Time, frame_id: str = 'left_optical') -> CompressedImage:
    msg = conv.numpy_to_compressed(rgb, fmt='jpeg', quality=90)
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    return msg


def _camera_info(h: Harness) -> None:
    fx, fy, cx, cy = CAM.intrinsics(*LEFT_HW)
    info = CameraInfo(height=LEFT_HW[0], width=LEFT_HW[1], k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])
    info.header.frame_id = 'left_optical'
    h.info_pub.publish(info)
    wait_for(lambda: h.node.cameras['left'].info is not None, what='CameraInfo at the node')


def _check_image(msg: Image, encoding: str, expected: np.ndarray, stamp: Time, frame_id: str) -> None:
    assert msg.encoding == encoding
    assert (msg.height, msg.width) == expected.shape[:2]
    assert msg.header.stamp == stamp and msg.header.frame_id == frame_id
    np.testing.assert_array_equal(conv.image_to_numpy(msg), expected)


def test_every_output_matches_the_pipeline_on_both_cameras(h, reference) -> None:
    _camera_info(h)
    front = generate_scene(1, *FRONT_HW, camera=CAM)[0]
    left = generate_scene(2, *LEFT_HW, camera=CAM)[0]
    st_f, st_l = _stamp(250), _stamp(400)
    got_f = h.send('front', _raw(front, st_f, encoding='bgr8'), [f'/segmentation/front/{o}' for o in OUTPUTS])
    left_msg = _jpeg(left, st_l)
    grid_topics = ['/segmentation/left/drivable/drivable/grid', '/segmentation/left/drivable/drivable/boundary']
    got_l = h.send('left', left_msg, [f'/segmentation/left/{o}' for o in OUTPUTS] + grid_topics)

    # end to end on the node clock: the sim clock stands at CLOCK_S, so latency is exactly clock - stamp
    # (statistics are recorded right after the camera's last publish: wait for them, do not race them)
    wait_for(lambda: 250.0 in list(h.node.cameras['front'].stats.stages['end_to_end'].samples),
             what='front end-to-end sample')
    wait_for(lambda: 400.0 in list(h.node.cameras['left'].stats.stages['end_to_end'].samples),
             what='left end-to-end sample')

    left_rgb = decode_compressed(np.frombuffer(bytes(left_msg.data), np.uint8))
    for cam, rgb, got, stamp, fid in (('front', front, got_f, st_f, 'front_optical'),
                                      ('left', left_rgb, got_l, st_l, 'left_optical')):
        ref = reference.process([rgb], want_color=True, want_overlay=True, want_confidence=True)[0]
        p = f'/segmentation/{cam}/'
        _check_image(got[p + 'mask'], 'mono8', ref.labels, stamp, fid)
        _check_image(got[p + 'color_mask'], 'rgb8', ref.color, stamp, fid)
        _check_image(got[p + 'overlay'], 'rgb8', ref.overlay, stamp, fid)
        _check_image(got[p + 'confidence'], 'mono8', ref.confidence, stamp, fid)
        for g in ('drivable', 'walkable'):
            m = ref.groups[g].mask
            assert set(np.unique(m)) <= {0, 255}
            _check_image(got[f'{p}drivable/{g}/mask'], 'mono8', m, stamp, fid)
        assert ref.labels.shape == rgb.shape[:2]
        if cam == 'left':
            road = ref.groups['drivable'].mask
            assert 0.05 < (road > 0).mean() < 0.95, 'the synthetic scene should show some road'
            fx, fy, cx, cy = CAM.intrinsics(*LEFT_HW)
            proj = GroundProjector([fx, 0, cx, 0, fy, cy, 0, 0, 1], LEFT_HW, LEFT_HW,
                                   from_flat(h.flat).cameras[1].mount, from_flat(h.flat).grid)
            grid = got_l[grid_topics[0]]
            assert grid.header.stamp == stamp and grid.header.frame_id == 'base_link'
            assert (grid.info.width, grid.info.height, grid.info.resolution) == (40, 20, 0.5)
            cells = conv.grid_to_numpy(grid)
            np.testing.assert_array_equal(cells, proj.project(road))
            assert (cells == 0).any() and (cells == -1).any()
            poly = got_l[grid_topics[1]]
            assert poly.header.frame_id == 'base_link' and poly.header.stamp == stamp
            pts = np.array([(q.x, q.y) for q in poly.polygon.points])
            expected = np.vstack([[1.0, 0.0], proj.boundary_points(ref.groups['drivable'].boundary_rows)])
            np.testing.assert_allclose(pts, expected, rtol=1e-5, atol=1e-4)
    # no CameraInfo on the front camera: no grid at all
    assert h.by_stamp('/segmentation/front/drivable/drivable/grid', st_f) is None


def test_diagnostics_report_cameras_engine_and_levels(h) -> None:
    h.send('front', _raw(generate_scene(3, *FRONT_HW, camera=CAM)[0], _stamp(250)), ['/segmentation/front/mask'])

    def latest() -> DiagnosticArray | None:
        with h.lock:
            arrs = list(h.received.get('/diagnostics', []))
        for arr in reversed(arrs):
            names = [s.name for s in arr.status]
            if 'evit_segmentation: camera front' in names and any(
                    kv.key == 'frames_processed' and kv.value != '0' for s in arr.status for kv in s.values):
                return arr
        return None

    wait_for(lambda: latest() is not None, timeout=5.0, what='a DiagnosticArray')
    arr = latest()
    assert arr.header.stamp.sec == CLOCK_S   # stamped on the node (sim) clock
    st = {s.name: s for s in arr.status}
    assert set(st) == {'evit_segmentation: camera front', 'evit_segmentation: camera left',
                       'evit_segmentation: inference engine'}
    front = {kv.key: kv.value for kv in st['evit_segmentation: camera front'].values}
    for stage in STAGES:
        for q in ('p50', 'p95', 'max'):
            assert float(front[f'latency.{stage}.{q}_ms']) >= 0.0, (stage, q)
    assert float(front['latency.end_to_end.p50_ms']) == pytest.approx(250.0, abs=0.01)
    for key in ('input_rate_hz', 'output_rate_hz', 'dropped_frames', 'bad_frames', 'drivable.drivable.fraction',
                'drivable.walkable.roi_fraction', 'class_fraction.road', 'class_fraction.traffic_light'):
        assert key in front, key
    assert sum(float(v) for k, v in front.items() if k.startswith('class_fraction.')) <= 1.0 + 1e-3
    assert 'no camera_info_topic' in front['grid']
    left = {kv.key: kv.value for kv in st['evit_segmentation: camera left'].values}
    assert left['grid'].startswith('ok')
    assert left['topic'] == '/left/image_raw/compressed'
    engine = {kv.key: kv.value for kv in st['evit_segmentation: inference engine'].values}
    assert engine['backend'] == 'onnxruntime' and engine['precision'] == 'fp32' and 'onnx' in engine
    assert int(engine['batches']) >= 1 and float(engine['latency.infer.p50_ms']) > 0

    # over budget (250 ms sim latency > 100 ms) -> ERROR; a silent camera -> ERROR with its name
    assert all(r.successful for r in h.set_params(diagnostics__latency_budget_ms=100.0,
                                                  diagnostics__silence_timeout_s=0.2))
    n = len(h.received.get('/diagnostics', []))
    wait_for(lambda: len(h.received.get('/diagnostics', [])) >= n + 2, timeout=5.0, what='two more reports')
    last = {s.name: s for s in h.received['/diagnostics'][-1].status}
    front_st = last['evit_segmentation: camera front']
    assert front_st.level == b'\x02'
    assert 'over budget' in front_st.message and 'silent' in front_st.message
    assert all(r.successful for r in h.set_params(diagnostics__latency_budget_ms=10000.0,
                                                  diagnostics__silence_timeout_s=60.0))


def test_live_parameter_applied_invalid_refused_restart_refused(h, reference) -> None:
    res = h.set_params(outputs__overlay_alpha=0.2)
    assert res[0].successful, res[0].reason
    rgb = generate_scene(4, *FRONT_HW, camera=CAM)[0]
    st = _stamp(300)
    got = h.send('front', _raw(rgb, st), ['/segmentation/front/overlay'])
    from evit_ros.config import OutputConfig
    reference.update(outputs=OutputConfig(overlay_alpha=0.2))
    try:
        ref = reference.process([rgb], want_color=True, want_overlay=True)[0]
        np.testing.assert_array_equal(conv.image_to_numpy(got['/segmentation/front/overlay']), ref.overlay)
    finally:
        reference.update(outputs=OutputConfig())
    bad = h.set_params(outputs__overlay_alpha=1.5)[0]
    assert not bad.successful and 'overlay_alpha' in bad.reason, bad.reason
    bad = h.set_params(outputs__mask_resolution='tiny')[0]
    assert not bad.successful and 'outputs.mask_resolution' in bad.reason
    restart = h.set_params(input__width=256)[0]
    assert not restart.successful and 'requires restart' in restart.reason
    assert h.node.get_parameter('outputs.overlay_alpha').value == 0.2
    assert h.node.get_parameter('input.width').value == 128
    h.set_params(outputs__overlay_alpha=0.5)


def test_malformed_frames_are_counted_and_survived(h) -> None:
    stats = {c: h.node.cameras[c].stats for c in ('front', 'left')}
    rgb = generate_scene(5, *FRONT_HW, camera=CAM)[0]
    bad_encoding = _raw(rgb, _stamp(10))
    bad_encoding.encoding = '32FC1'
    wrong_step = _raw(rgb, _stamp(11))
    wrong_step.step = 10
    truncated = _raw(rgb, _stamp(12))
    truncated.data = truncated.data[:len(truncated.data) // 2]
    corrupt = _jpeg(generate_scene(6, *LEFT_HW, camera=CAM)[0], _stamp(13))
    raw = bytes(corrupt.data)
    corrupt.data = type(corrupt.data)('B', raw[:2] + b'\x13' * 300 + raw[-2:])
    for cam, msg, reason in (('front', bad_encoding, 'encoding'), ('front', wrong_step, 'step'),
                             ('front', truncated, 'truncated'), ('left', corrupt, 'corrupt')):
        before = stats[cam].bad[reason]
        h.pubs[cam].publish(msg)
        wait_for(lambda s=stats[cam], r=reason, b=before: s.bad[r] > b, what=f'bad frame {reason} counted')
    good = _stamp(20)
    got = h.send('front', _raw(rgb, good), ['/segmentation/front/mask'])
    assert got['/segmentation/front/mask'].header.stamp == good
    h.send('left', _jpeg(generate_scene(6, *LEFT_HW, camera=CAM)[0], _stamp(21)), ['/segmentation/left/mask'])
    assert h.node.engine_stats.errors == 0


def test_latest_frame_wins_and_overlay_confidence_only_while_subscribed(h) -> None:
    node = h.node
    calls: list[dict] = []
    real, real_derive = node.segmenter.run_labels, node.segmenter.derive

    def spy(frames, **kw):   # phase 1 (labels, confidence) then derive per frame (color, overlay, groups)
        calls.append({'n': len(frames), 'want_confidence': any(kw['want_confidence']), 'want_overlay': False})
        return real(frames, **kw)

    def spy_derive(fr, **kw):
        calls[-1]['want_overlay'] |= bool(kw['want_overlay'])
        return real_derive(fr, **kw)

    node.segmenter.run_labels = spy
    node.segmenter.derive = spy_derive
    try:
        cam = node.cameras['front']
        cb = node._make_callback(cam)
        first, second = _stamp(50), _stamp(51)
        dropped = cam.stats.dropped
        with node._worker.cond:   # the worker cannot take the slot in between: the first frame is replaced
            cb(_raw(generate_scene(7, *FRONT_HW, camera=CAM)[0], first))
            cb(_raw(generate_scene(8, *FRONT_HW, camera=CAM)[0], second))
        wait_for(lambda: h.by_stamp('/segmentation/front/mask', second) is not None, what='second frame output')
        assert cam.stats.dropped == dropped + 1
        time.sleep(0.2)
        assert h.by_stamp('/segmentation/front/mask', first) is None
        assert calls[-1]['want_overlay'] and calls[-1]['want_confidence']

        for c in ('front', 'left'):
            h.unsubscribe(f'/segmentation/{c}/overlay')
            h.unsubscribe(f'/segmentation/{c}/confidence')
        wait_for(lambda: all(node.cameras[c].pubs[o].get_subscription_count() == 0
                             for c in ('front', 'left') for o in ('overlay', 'confidence')), what='unsubscribed')
        h.send('front', _raw(generate_scene(9, *FRONT_HW, camera=CAM)[0], _stamp(60)), ['/segmentation/front/mask'])
        assert not calls[-1]['want_overlay'] and not calls[-1]['want_confidence']

        # both cameras pending together -> one set, run in chunks of the batching policy's size: this engine takes
        # one frame per run (static batch 1), so two calls of one frame (evit_ros.pipeline.batching)
        cb_left = node._make_callback(node.cameras['left'])
        before = len(calls)
        with node._worker.cond:
            cb(_raw(generate_scene(10, *FRONT_HW, camera=CAM)[0], _stamp(70)))
            cb_left(_jpeg(generate_scene(11, *LEFT_HW, camera=CAM)[0], _stamp(71)))
        wait_for(lambda: all(h.by_stamp(f'/segmentation/{c}/mask', _stamp(s)) is not None
                             for c, s in (('front', 70), ('left', 71))), what='both outputs')
        assert [c['n'] for c in calls[before:]] == [1, 1] and node._worker.policy.model.max_batch == 1
    finally:
        node.segmenter.run_labels = real
        node.segmenter.derive = real_derive


def _wait_subscribed(h: Harness, cam: str, keys: list[str], count: int) -> None:
    wait_for(lambda: all(h.node.cameras[cam].pubs[k].get_subscription_count() == count for k in keys),
             what=f'{keys} subscription count {count}')


def test_compressed_outputs_decode_exactly_and_are_encoded_only_while_subscribed(h, reference, monkeypatch) -> None:
    """<output>/compressed for recording: image_transport formats, PNG mask/confidence exact, JPEG color/overlay
    at the live outputs.jpeg_quality; an overlay is computed for overlay/compressed alone, and nothing is
    encoded once the compressed topics have no subscriber."""
    import cv2

    from evit_ros.pipeline.decode import decode_compressed_mask
    from evit_ros.ros import outputs
    encoded: list[str] = []
    real_encode = outputs.conv.encode_compressed

    def spy(arr, encoding, fmt, *args, **kwargs):
        encoded.append(fmt)
        return real_encode(arr, encoding, fmt, *args, **kwargs)

    monkeypatch.setattr(outputs.conv, 'encode_compressed', spy)
    base = '/segmentation/front/'
    names = ['mask', 'confidence', 'color_mask', 'overlay']
    for o in names:
        h.subscribe(f'{base}{o}/compressed', CompressedImage)
        if f'{base}{o}' not in h.subs:   # an earlier test may have unsubscribed the raw twin
            h.subscribe(f'{base}{o}', Image)
    _wait_subscribed(h, 'front', [f'{o}/compressed' for o in names] + names, 1)
    rgb = generate_scene(21, *FRONT_HW, camera=CAM)[0]
    st = _stamp(120)
    got = h.send('front', _raw(rgb, st), [f'{base}{o}' for o in names] + [f'{base}{o}/compressed' for o in names])
    ref = reference.process([rgb], want_color=True, want_overlay=True, want_confidence=True)[0]
    for o in names:
        c = got[f'{base}{o}/compressed']
        assert c.header.stamp == st and c.header.frame_id == 'front_optical'
    assert got[base + 'mask/compressed'].format == 'mono8; png compressed '   # image_transport's exact string
    assert got[base + 'confidence/compressed'].format == 'mono8; png compressed '
    assert got[base + 'color_mask/compressed'].format == 'rgb8; jpeg compressed bgr8'
    assert got[base + 'overlay/compressed'].format == 'rgb8; jpeg compressed bgr8'
    mask = decode_compressed_mask(np.frombuffer(bytes(got[base + 'mask/compressed'].data), np.uint8))
    np.testing.assert_array_equal(mask, ref.labels)                    # lossless: every class id survives
    np.testing.assert_array_equal(mask, conv.image_to_numpy(got[base + 'mask']))
    conf = decode_compressed_mask(np.frombuffer(bytes(got[base + 'confidence/compressed'].data), np.uint8))
    np.testing.assert_array_equal(conf, ref.confidence)
    for o, want in (('color_mask', ref.color), ('overlay', ref.overlay)):
        bgr = cv2.imdecode(np.frombuffer(bytes(got[f'{base}{o}/compressed'].data), np.uint8), cv2.IMREAD_COLOR)
        assert bgr.shape == want.shape
        assert np.abs(bgr[..., ::-1].astype(int) - want).mean() < 6.0, o   # JPEG: close, in RGB order
    size_90 = len(got[base + 'overlay/compressed'].data)

    assert h.set_params(outputs__jpeg_quality=20)[0].successful
    assert not h.set_params(outputs__jpeg_quality=101)[0].successful
    st2 = _stamp(121)
    got2 = h.send('front', _raw(rgb, st2), [f'{base}overlay/compressed'])
    assert len(got2[base + 'overlay/compressed'].data) < 0.7 * size_90
    h.set_params(outputs__jpeg_quality=90)

    # only overlay/compressed subscribed: the overlay is still computed (for the compressed form alone)
    for o in names:
        h.unsubscribe(f'{base}{o}')
    for o in ('mask', 'confidence', 'color_mask'):
        h.unsubscribe(f'{base}{o}/compressed')
    _wait_subscribed(h, 'front', names + [f'{o}/compressed' for o in ('mask', 'confidence', 'color_mask')], 0)
    encoded.clear()
    st3 = _stamp(122)
    got3 = h.send('front', _raw(rgb, st3), [f'{base}overlay/compressed', base + 'drivable/drivable/mask'])
    assert got3[base + 'overlay/compressed'].header.stamp == st3
    assert encoded == ['jpeg'], encoded
    assert h.by_stamp(base + 'mask', st3) is None
    # nothing subscribed to any compressed output: nothing encoded
    h.unsubscribe(f'{base}overlay/compressed')
    _wait_subscribed(h, 'front', ['overlay/compressed'], 0)
    encoded.clear()
    h.send('front', _raw(rgb, _stamp(123)), [base + 'drivable/drivable/mask'])
    assert encoded == []
    for o in names:   # leave the raw subscriptions as the other tests expect them
        h.subscribe(f'{base}{o}', Image)
