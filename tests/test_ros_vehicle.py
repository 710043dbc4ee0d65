"""The node on first contact with a vehicle, in-process over real DDS: input QoS follows the camera publishers
(``auto``), stamps the latency cannot use are counted, ``use_sim_time`` without ``/clock`` says so, ROI unset
and palette checks at run time, and the parameter errors name the real problem."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime')

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from test_ros_node import InProcessNode, export_test_onnx, wait_for  # noqa: E402

from evit_ros.errors import ConfigError  # noqa: E402
from evit_ros.ros import conversions as conv  # noqa: E402
from evit_ros.ros.node import SegmentationNode  # noqa: E402
from evit_ros.ros.qos import decide_reliability  # noqa: E402

RELIABLE = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
BEST_EFFORT = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)


@pytest.fixture(scope='module')
def onnx(tmp_path_factory) -> Path:
    return export_test_onnx(tmp_path_factory.mktemp('onnx'))


class Rig(InProcessNode):
    """One node (auto input QoS unless told otherwise), a tester node, one executor thread."""

    def __init__(self, onnx: Path, **params: Any) -> None:
        flat = {'backend.type': 'onnxruntime', 'backend.onnx_path': str(onnx), 'backend.threads': 1,
                'input.height': 64, 'input.width': 128, 'cameras': ['front'],
                'cameras.front.camera_info_topic': '/front/camera_info', 'diagnostics.silence_timeout_s': 60.0,
                'diagnostics.expected_rate_hz': 0.1}
        flat.update(params)
        self._create([Parameter(k, value=v) for k, v in flat.items()], 'vehicle_tester')
        self.lock = threading.Lock()
        self.masks: list[Image] = []
        self.diags: list[tuple[float, DiagnosticArray]] = []
        self.tester.create_subscription(Image, '/segmentation/front/mask', self._on_mask, RELIABLE)
        self.tester.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)
        self._spin()

    def _on_mask(self, msg: Image) -> None:
        with self.lock:
            self.masks.append(msg)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diags.append((time.monotonic(), msg))

    def camera_status(self, after: float) -> Any:
        """The next camera status published after monotonic time ``after``."""
        box: list[Any] = []

        def got() -> bool:
            with self.lock:
                for t_rx, arr in self.diags:
                    for st in arr.status:
                        if st.name.endswith('camera front') and t_rx > after:
                            box.append(st)
            return bool(box)
        wait_for(got, 10, 'a diagnostics report')
        return box[-1]

    def mask_for(self, pub: Any, msg: Image, timeout: float = 15.0) -> Image:
        wait_for(lambda: pub.get_subscription_count() > 0, 15, 'the node to subscribe')
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pub.publish(msg)
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                with self.lock:
                    for m in self.masks:
                        if m.header.stamp == msg.header.stamp:
                            return m
                time.sleep(0.01)
        raise AssertionError('no mask')


def _frame(stamp: Time, hw: tuple[int, int] = (48, 80)) -> Image:
    rgb = np.random.default_rng(3).integers(0, 256, (*hw, 3), dtype=np.uint8)
    msg = conv.numpy_to_image(rgb, 'rgb8')
    msg.header.stamp = stamp
    msg.header.frame_id = 'front_optical'
    return msg


def test_decide_reliability_like_ros2_bag() -> None:
    assert decide_reliability([]) is None
    assert decide_reliability(['reliable', 'reliable']) == 'reliable'
    assert decide_reliability(['reliable', 'best_effort']) == 'best_effort'


def test_auto_qos_follows_the_publishers_of_image_and_camera_info(onnx) -> None:
    rig = Rig(onnx)
    node, t = rig.node, rig.tester
    cam = node.cameras['front']
    try:
        assert node.cfg.qos.input_reliability == 'auto'
        # nobody publishes yet: subscribed reliable at once (what most cameras offer), not decided
        assert cam.image_sub.subscription is not None and cam.image_sub.reliability == 'reliable'
        assert not cam.image_sub.decided
        reliable = t.create_publisher(Image, '/front/image_raw', RELIABLE)
        info = t.create_publisher(CameraInfo, '/front/camera_info', RELIABLE)
        wait_for(lambda: cam.image_sub.reliability == 'reliable' and cam.info_sub.reliability == 'reliable', 10,
                 'reliable subscriptions')
        wait_for(lambda: reliable.get_subscription_count() == 1 and info.get_subscription_count() == 1, 10,
                 'matching')
        stamp = t.get_clock().now().to_msg()
        assert rig.mask_for(reliable, _frame(stamp)).header.stamp == stamp
        # a best-effort publisher joins: a reliable subscription cannot match it -> recreate best effort
        best_effort = t.create_publisher(Image, '/front/image_raw', BEST_EFFORT)
        wait_for(lambda: cam.image_sub.reliability == 'best_effort', 10, 'the switch to best effort')
        wait_for(lambda: best_effort.get_subscription_count() == 1 and reliable.get_subscription_count() == 1, 10,
                 'both publishers matched')
        stamp = t.get_clock().now().to_msg()
        assert rig.mask_for(best_effort, _frame(stamp)).header.stamp == stamp
        assert cam.info_sub.reliability == 'reliable'   # decided per topic
        t.destroy_publisher(best_effort)
        wait_for(lambda: cam.image_sub.reliability == 'reliable', 10, 'back to reliable')
        # a latched CameraInfo (transient local, as many drivers publish it) is received although sent before
        t.destroy_publisher(info)
        latched_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
        latched = t.create_publisher(CameraInfo, '/front/camera_info', latched_qos)
        latched.publish(CameraInfo(height=48, width=80, k=[50.0, 0.0, 40.0, 0.0, 50.0, 24.0, 0.0, 0.0, 1.0]))
        wait_for(lambda: cam.info_sub.transient_local, 10, 'a transient-local CameraInfo subscription')
        wait_for(lambda: cam.info is not None and cam.info[1:] == (48, 80), 10, 'the latched CameraInfo')
        values = {kv.key: kv.value for kv in rig.camera_status(time.monotonic()).values}
        assert values['input_qos'] == 'reliable'
    finally:
        rig.close()


def test_fixed_best_effort_stays_and_stamps_latency_cannot_use_are_counted(onnx) -> None:
    rig = Rig(onnx, **{'qos.input_reliability': 'best_effort'})
    cam = rig.node.cameras['front']
    try:
        assert cam.image_sub.reliability == 'best_effort' and cam.image_sub.subscription is not None
        pub = rig.tester.create_publisher(Image, '/front/image_raw', RELIABLE)
        now = rig.tester.get_clock().now().nanoseconds
        future = Time(sec=now // 10**9 + 86400, nanosec=0)       # a day ahead
        rig.mask_for(pub, _frame(future))
        rig.mask_for(pub, _frame(Time(sec=0, nanosec=0)))
        wait_for(lambda: cam.stats.stamps['future'] >= 1 and cam.stats.stamps['zero'] >= 1, 5, 'stamp counters')
        assert cam.stats.stages['end_to_end'].summary() is None   # neither became a (negative or huge) latency
        ok = Time(sec=now // 10**9, nanosec=now % 10**9)
        rig.mask_for(pub, _frame(ok))
        wait_for(lambda: cam.stats.stages['end_to_end'].summary() is not None, 5, 'a real latency')
        assert cam.stats.stages['end_to_end'].summary()['max'] >= 0.0
        st = rig.camera_status(time.monotonic())
        values = {kv.key: kv.value for kv in st.values}
        assert values['stamps_excluded.future'] != '0' and values['stamps_excluded.zero'] != '0'
        assert cam.image_sub.reliability == 'best_effort'
    finally:
        rig.close()


def test_use_sim_time_without_clock_reports_waiting_for_clock(onnx) -> None:
    rig = Rig(onnx, use_sim_time=True)
    try:
        pub = rig.tester.create_publisher(Image, '/front/image_raw', RELIABLE)
        rig.mask_for(pub, _frame(Time(sec=100, nanosec=0)))
        st = rig.camera_status(time.monotonic())
        assert 'waiting for /clock' in st.message and st.level == b'\x01'
        values = {kv.key: kv.value for kv in st.values}
        assert values['latency.end_to_end.p50_ms'] == 'nan'
        assert float(values['frames_processed']) >= 1
    finally:
        rig.close()


def test_roi_unset_at_run_time_and_palette_ids_checked(onnx) -> None:
    rig = Rig(onnx)
    node = rig.node
    try:
        square = [0.0, 0.5, 1.0, 0.5, 1.0, 1.0, 0.0, 1.0]
        assert node.set_parameters([Parameter('drivable.roi', Parameter.Type.DOUBLE_ARRAY, square)])[0].successful
        wait_for(lambda: len(node.cfg.drivable.roi) == 4, 5, 'roi applied')
        # `ros2 param set /evit_segmentation drivable.roi '[]'` sends an empty BOOL array
        res = node.set_parameters([Parameter('drivable.roi', Parameter.Type.BOOL_ARRAY, [])])[0]
        assert res.successful, res.reason
        wait_for(lambda: node.cfg.drivable.roi == (), 5, 'roi unset')
        res = node.set_parameters([Parameter('drivable.roi', Parameter.Type.NOT_SET)])[0]
        assert not res.successful and "'[]'" in res.reason and node.has_parameter('drivable.roi')
        res = node.set_parameters([Parameter('drivable.roi', Parameter.Type.STRING_ARRAY, ['a', 'b'])])[0]
        assert not res.successful and 'list of numbers' in res.reason
        res = node.set_parameters([Parameter('outputs.palette_overrides', Parameter.Type.STRING_ARRAY,
                                             ['19:255,0,0'])])[0]
        assert not res.successful and '19 classes' in res.reason and '18=bicycle' in res.reason
        res = node.set_parameters([Parameter('outputs.palette_overrides', Parameter.Type.STRING_ARRAY,
                                             ['18:255,0,0'])])[0]
        assert res.successful
    finally:
        rig.close()


def _construct(onnx: Path, **params: Any) -> str:
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    flat = {'backend.type': 'onnxruntime', 'backend.onnx_path': str(onnx), 'input.height': 64, 'input.width': 128}
    flat.update(params)
    try:
        with pytest.raises(ConfigError) as ei:
            SegmentationNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in flat.items()])
        return str(ei.value)
    finally:
        rclpy.shutdown(context=ctx)


def test_startup_errors_name_the_real_problem(onnx) -> None:
    text = _construct(onnx, cameras=['front', 'front'])
    assert 'cameras lists front more than once' in text and 'decimal point' not in text
    text = _construct(onnx, **{'grid.resolution_m': 1})     # an integer for a double: the hint belongs here
    assert 'grid.resolution_m' in text and 'decimal point' in text
    text = _construct(onnx, **{'outputs.palette_overrides': ['200:1,2,3']})
    assert 'class id(s) [200]' in text
