"""What a vehicle operator meets, in-process over real DDS (issue 23): /clock jumps under use_sim_time leave
latency alone, QoS incompatibility reports name the policy, auto QoS subscribes before a camera starts, and
the uncertainty signal in diagnostics."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime')
pytest.importorskip('torch')

from builtin_interfaces.msg import Time  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from test_ros_node import export_test_onnx, wait_for  # noqa: E402
from test_ros_vehicle import BEST_EFFORT, RELIABLE, Rig, _frame  # noqa: E402


@pytest.fixture(scope='module')
def onnx(tmp_path_factory) -> Path:
    return export_test_onnx(tmp_path_factory.mktemp('onnx'))


def _values(st: Any) -> dict[str, str]:
    return {kv.key: kv.value for kv in st.values}


def _set_clock(rig: Rig, pub: Any, sec: int) -> None:
    """Publish /clock = ``sec`` until the node's clock reads it."""
    msg = Clock(clock=Time(sec=sec, nanosec=0))
    deadline = time.monotonic() + 10
    while rig.node.get_clock().now().nanoseconds != sec * 10**9:
        assert time.monotonic() < deadline, f'the node clock never read /clock={sec}'
        pub.publish(msg)
        time.sleep(0.02)


@pytest.mark.parametrize('jump_s', [60, -60], ids=['forward', 'backward'])
def test_a_clock_jump_leaves_frames_in_flight_out_of_latency_and_restarts_the_window(onnx, capfd, jump_s) -> None:
    rig = Rig(onnx, use_sim_time=True,
              **{'qos.input_reliability': 'reliable', 'diagnostics.latency_budget_ms': 1000.0})
    cam = rig.node.cameras['front']
    try:
        clock = rig.tester.create_publisher(Clock, '/clock', RELIABLE)
        wait_for(lambda: clock.get_subscription_count() > 0, 15, 'the node to subscribe /clock')
        pub = rig.tester.create_publisher(Image, '/front/image_raw', RELIABLE)
        _set_clock(rig, clock, 1000)
        rig.mask_for(pub, _frame(Time(sec=999, nanosec=990_000_000)))     # 10 ms before the clock
        wait_for(lambda: cam.stats.stages['end_to_end'].summary() is not None, 5, 'a latency sample')
        assert abs(cam.stats.stages['end_to_end'].summary()['max'] - 10.0) < 0.5
        _set_clock(rig, clock, 1000 + jump_s)
        # a frame stamped before the jump, processed after it: in flight across the jump
        rig.mask_for(pub, _frame(Time(sec=1000, nanosec=0)))
        wait_for(lambda: cam.stats.stamps['clock_jump'] >= 1, 5, 'the frame counted as across the jump')
        st = rig.camera_status(time.monotonic())
        v = _values(st)
        assert v['latency.end_to_end.max_ms'] == 'nan', v          # neither 60000 ms nor the old window
        assert v['current_delay_from_realtime_ms'] == 'nan', v
        assert v['clock_jumps'] == '1' and v['stamps_excluded.clock_jump'] >= '1', v
        assert 'chrony' not in st.message and 'future' not in st.message, st.message
        # frames of the new timeline are measured again
        rig.mask_for(pub, _frame(Time(sec=1000 + jump_s - 1, nanosec=980_000_000)))
        wait_for(lambda: cam.stats.stages['end_to_end'].summary() is not None, 5, 'a latency after the jump')
        assert abs(cam.stats.stages['end_to_end'].summary()['max'] - 20.0) < 0.5
    finally:
        rig.close()
    err = capfd.readouterr().err
    assert err.count('clock jumped by') == 1, err[-3000:]
    assert f'clock jumped by {jump_s:+.1f} s' in err, err[-3000:]


class _Stderr:
    """Accumulates what the process wrote to stderr (rcutils logs there) while waiting for a needle."""

    def __init__(self, capfd: Any) -> None:
        self.capfd = capfd
        self.text = ''

    def wait(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            assert time.monotonic() < deadline, f'no {needle!r} in:\n{self.text[-3000:]}'
            time.sleep(0.05)
            self.text += self.capfd.readouterr().err
        return self.text


@pytest.mark.parametrize('mode', ['auto', 'reliable'])
def test_incompatible_qos_names_the_policy_and_count_and_advises_only_what_applies(onnx, capfd, mode) -> None:
    """A best-effort publisher joins a reliable camera's topic: auto re-decides (an info line, no advice), a
    fixed reliable subscription is told how to fix it; never the event object's repr."""
    rig = Rig(onnx, **{'qos.input_reliability': mode})
    cam = rig.node.cameras['front']
    err = _Stderr(capfd)
    try:
        reliable = rig.tester.create_publisher(Image, '/front/image_raw', RELIABLE)
        wait_for(lambda: cam.image_sub.reliability == 'reliable' and reliable.get_subscription_count() >= 1, 10,
                 'a reliable subscription')
        rig.tester.create_publisher(Image, '/front/image_raw', BEST_EFFORT)
        text = err.wait('RELIABILITY policy')
        if mode == 'auto':
            wait_for(lambda: cam.image_sub.reliability == 'best_effort', 10, 'the switch to best effort')
    finally:
        rig.close()
    text += capfd.readouterr().err
    line = next(x for x in text.splitlines() if 'RELIABILITY policy' in x)
    assert '<rclpy' not in text and 'object at 0x' not in text, text[-3000:]
    assert '/front/image_raw' in line and 'so far' in line, line
    if mode == 'auto':
        assert '[INFO]' in line and 'auto QoS re-subscribes' in line and 'Use auto' not in line, line
    else:
        assert '[WARN]' in line and 'qos.input_reliability to auto' in line, line


@pytest.mark.parametrize('camera_qos', ['reliable', 'best_effort'])
def test_auto_qos_subscribes_before_a_camera_starts_and_loses_nothing_when_it_decides(onnx, camera_qos) -> None:
    """The node subscribes (reliable) before any publisher exists: a reliable camera that starts later is matched
    by discovery, a best-effort one by the decision; either's burst is masked completely, also across a
    re-decision (the old subscription delivers until the new one does; a frame both deliver is passed on once)."""
    n = 12
    rig = Rig(onnx, **{'diagnostics.latency_budget_ms': 10000.0})
    cam = rig.node.cameras['front']
    try:
        wait_for(lambda: rig.tester.count_subscribers('/front/image_raw') == 1, 10,
                 'the node subscribed before any camera publishes')
        pub = rig.tester.create_publisher(Image, '/front/image_raw',
                                          RELIABLE if camera_qos == 'reliable' else BEST_EFFORT)
        wait_for(lambda: pub.get_subscription_count() >= 1, 10, 'matching')
        stamps = []
        for i in range(n):       # 12 frames over ~1.8 s: the re-decision (0.5 s polls) falls inside
            stamp = Time(sec=100, nanosec=i * 1000)
            stamps.append((stamp.sec, stamp.nanosec))
            pub.publish(_frame(stamp))
            time.sleep(0.15)

        def masked() -> set[tuple[int, int]]:
            with rig.lock:
                return {(m.header.stamp.sec, m.header.stamp.nanosec) for m in rig.masks}
        wait_for(lambda: set(stamps) <= masked(), 10, f'all {n} masks')
        assert cam.image_sub.reliability == camera_qos and cam.image_sub.decided
        assert cam.stats.received == n and cam.stats.dropped == 0, (cam.stats.received, cam.stats.dropped)
    finally:
        rig.close()


@pytest.mark.parametrize(('rate_hz', 'warned'), [(4.9975, False), (4.0, True)],
                         ids=['4.9975-hz-prints-5.00', '4.00-hz'])
def test_the_rate_warning_compares_what_it_prints(rate_hz, warned) -> None:
    """At 4.9975 Hz against 10 Hz expected, the old check warned "input rate 5.0 Hz below half the expected
    10.0 Hz"; the check now uses the printed (2-decimal) values, and the message names the threshold."""
    from evit_ros.config import DiagnosticsConfig
    from evit_ros.ros.diagnostics import CameraStats
    st = CameraStats('front', '/front/image_raw', ('road',))
    t0 = st.created
    for i in range(21):            # a steady stream at rate_hz (the rate is over the last 10 s of frames)
        st.on_receive(now=t0 + i / rate_hz)
    last = t0 + 20 / rate_hz
    s = st.status('n', DiagnosticsConfig(expected_rate_hz=10.0, silence_timeout_s=60.0), now=last + 0.01)
    v = _values(s)
    assert ('input rate' in s.message) == warned, (v['input_rate_hz'], s.message)
    if warned:
        assert f'input rate {v["input_rate_hz"]} Hz below 5.00 Hz, half the expected 10.00 Hz' in s.message


def test_a_refused_transition_is_one_node_line_by_id_and_by_label_and_ranges_hold_while_unconfigured(
        onnx, capfd) -> None:
    from lifecycle_msgs.msg import Transition
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from test_ros_lifecycle import Managed, call_service, change_state
    m = Managed(**{'backend.onnx_path': str(onnx)})
    try:
        assert not change_state(m.change, m.get, Transition(id=Transition.TRANSITION_ACTIVATE))
        assert not change_state(m.change, m.get, Transition(label='activate'))
        assert m.state() == 'unconfigured'

        def set_depth(value: int) -> Any:
            req = SetParameters.Request(parameters=[ParameterMsg(name='qos.input_depth', value=ParameterValue(
                type=ParameterType.PARAMETER_INTEGER, integer_value=value))])
            return call_service(m.params, req).results[0]
        assert set_depth(7).successful                    # a restart-only parameter: accepted while unconfigured
        refused = set_depth(0)                             # outside its declared range: refused in any state
        assert not refused.successful and 'out of range' in refused.reason and 'Min: 1' in refused.reason
    finally:
        m.close()
    err = capfd.readouterr().err
    lines = [x for x in err.splitlines() if 'transition' in x and 'activate' in x]
    assert len(lines) == 2, err[-3000:]
    assert all('[evit_segmentation]' in x and 'refused in state unconfigured' in x for x in lines), lines
    assert all('only configure, shutdown' in x for x in lines), lines
    assert '.c:' not in err and 'rcl_lifecycle' not in err, err[-3000:]


@pytest.mark.parametrize('min_mean', [1.0, 0.0], ids=['always-low', 'never'])
def test_uncertainty_signal_in_diagnostics_and_a_throttled_warning_after_n_low_frames(onnx, capfd, min_mean) -> None:
    """confidence.mean / low_fraction per camera match the confidence the node computes; a camera whose mean
    stays below diagnostics.min_mean_confidence for low_confidence_frames frames WARNs (diagnostics and one
    throttled log line with the numbers); min_mean_confidence 0 never does."""
    import numpy as np
    rig = Rig(onnx, **{'qos.input_reliability': 'reliable', 'diagnostics.min_mean_confidence': min_mean,
                       'diagnostics.low_confidence_frames': 3, 'diagnostics.low_confidence_threshold': 0.9,
                       'diagnostics.latency_budget_ms': 10000.0})
    cam = rig.node.cameras['front']
    conf: list[Any] = []
    rig.tester.create_subscription(Image, '/segmentation/front/confidence', conf.append, RELIABLE)
    try:
        pub = rig.tester.create_publisher(Image, '/front/image_raw', RELIABLE)
        wait_for(lambda: rig.node.cameras['front'].pubs['confidence'].get_subscription_count() > 0, 10, 'matching')
        for _ in range(4):
            rig.mask_for(pub, _frame(rig.tester.get_clock().now().to_msg()))
        wait_for(lambda: len(conf) >= 4 and cam.stats.low_streak in (0, 4), 5, 'four confidence images')
        st = rig.camera_status(time.monotonic())
        v = _values(st)
    finally:
        rig.close()
    images = [np.frombuffer(bytes(m.data), np.uint8) / 255.0 for m in conf[-4:]]
    assert float(v['confidence.mean']) == pytest.approx(np.mean([x.mean() for x in images]), abs=0.03), v
    assert float(v['confidence.low_fraction']) == pytest.approx(np.mean([(x < 0.9).mean() for x in images]),
                                                                abs=0.05), v
    err = capfd.readouterr().err
    warned = [x for x in err.splitlines() if 'mean confidence' in x and 'WARN' in x]
    if min_mean == 1.0:
        assert v['confidence.low_streak_frames'] == '4' and st.level == b'\x01', v
        assert 'below 1.00 for the last 4 frames' in st.message, st.message
        assert len(warned) == 1 and 'camera front: mean confidence' in warned[0] and '% of pixels below 0.90' \
            in warned[0], warned
    else:
        assert v['confidence.low_streak_frames'] == '0' and 'confidence' not in st.message, st.message
        assert warned == [], warned
