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
    return export_test_onnx(tmp_path_factory.mktemp('onnx') / 'b0_64x128.onnx')


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


def test_auto_qos_subscribes_before_a_camera_starts_and_loses_nothing_when_it_decides(onnx) -> None:
    """The node subscribes (best effort) before any publisher exists; a reliable camera that starts later is
    matched by discovery and its burst is masked completely, across the re-decision to reliable (the old
    subscription delivers until the new one does; a frame both deliver is passed on once)."""
    n = 12
    rig = Rig(onnx, **{'diagnostics.latency_budget_ms': 10000.0})
    cam = rig.node.cameras['front']
    try:
        wait_for(lambda: rig.tester.count_subscribers('/front/image_raw') == 1, 10,
                 'the node subscribed before any camera publishes')
        pub = rig.tester.create_publisher(Image, '/front/image_raw', RELIABLE)
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
        assert cam.image_sub.reliability == 'reliable' and cam.image_sub.decided
        assert cam.stats.received == n and cam.stats.dropped == 0, (cam.stats.received, cam.stats.dropped)
    finally:
        rig.close()
