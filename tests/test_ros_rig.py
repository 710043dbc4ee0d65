"""A surround rig on one node, in-process over real DDS: four cameras streaming at their own rates, every frame
accounted for (masks + the node's drops + frames missing by stamp gaps = frames sent), a reliable subscriber that
keeps up receives every mask published, per-camera expected rates, and engine runs counted per run."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime')
pytest.importorskip('torch')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from test_ros_node import InProcessNode, export_test_onnx, wait_for  # noqa: E402

from evit_ros.ros import conversions as conv  # noqa: E402

CAMS = ('cam0', 'cam1', 'cam2', 'slow')
RATES = {'cam0': 10.0, 'cam1': 10.0, 'cam2': 10.0, 'slow': 2.0}
SKIPPED = {'cam1': {14, 15, 22}}      # frames "lost in the transport": their stamps are never published
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope='module')
def onnx(tmp_path_factory) -> Path:
    return export_test_onnx(tmp_path_factory.mktemp('onnx'))


class Rig(InProcessNode):
    def __init__(self, onnx: Path) -> None:
        flat: dict[str, Any] = {
            'backend.type': 'onnxruntime', 'backend.onnx_path': str(onnx), 'backend.threads': 1,
            'input.height': 64, 'input.width': 128, 'cameras': list(CAMS),
            'diagnostics.expected_rate_hz': 10.0, 'diagnostics.latency_budget_ms': 10000.0,
            'diagnostics.silence_timeout_s': 60.0, 'cameras.slow.expected_rate_hz': 2.0}
        self._create([Parameter(k, value=v) for k, v in flat.items()], 'rig_tester')
        self.lock = threading.Lock()
        self.masks: dict[str, list[int]] = {c: [] for c in CAMS}
        self.diags: list[DiagnosticArray] = []
        t = self.tester
        self.pubs = {c: t.create_publisher(Image, f'/{c}/image_raw', RELIABLE) for c in CAMS}
        for c in CAMS:
            t.create_subscription(Image, f'/segmentation/{c}/mask', lambda m, c=c: self._on_mask(c, m), RELIABLE)
        t.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)
        self._spin()
        wait_for(lambda: all(p.get_subscription_count() > 0 for p in self.pubs.values()), what='node subscriptions')
        wait_for(lambda: all(c.pubs['mask'].get_subscription_count() > 0 for c in self.node.cameras.values()),
                 what='mask subscribers')

    def _on_mask(self, cam: str, msg: Image) -> None:
        with self.lock:
            self.masks[cam].append(conv.stamp_to_ns(msg.header.stamp))

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diags.append(msg)

    def statuses(self) -> dict[str, tuple[Any, dict[str, str]]]:
        with self.lock:
            arr = self.diags[-1]
        return {s.name.rsplit(' ', 1)[-1] if ': camera ' in s.name else 'engine':
                (s, {kv.key: kv.value for kv in s.values}) for s in arr.status}


def test_a_steady_four_camera_stream_is_accounted_for_frame_by_frame(onnx: Path) -> None:
    rig = Rig(onnx)
    try:
        frames = {c: conv.numpy_to_image(np.full((120, 160, 3), 40 * i, np.uint8), 'rgb8')
                  for i, c in enumerate(CAMS)}
        duration_s = 3.0
        sent = {c: 0 for c in CAMS}
        t0_ns = rig.node.get_clock().now().nanoseconds
        t0 = time.monotonic()
        ticks = {c: 0 for c in CAMS}
        while time.monotonic() - t0 < duration_s:
            for c in CAMS:
                k = ticks[c]
                due = t0 + k / RATES[c]
                if time.monotonic() < due:
                    continue
                ticks[c] += 1
                if k in SKIPPED.get(c, ()):
                    continue
                msg = frames[c]
                msg.header.stamp = rclpy.time.Time(nanoseconds=t0_ns + int(k * 1e9 / RATES[c])).to_msg()
                rig.pubs[c].publish(msg)
                sent[c] += 1
            time.sleep(0.002)

        with rig.lock:
            during = list(rig.diags)

        def settled() -> bool:
            st = rig.statuses() if rig.diags else {}
            if set(CAMS) - set(st):
                return False
            return all(int(st[c][1]['frames_received']) == int(st[c][1]['frames_processed'])
                       + int(st[c][1]['dropped_frames']) == sent[c] for c in CAMS)
        wait_for(settled, timeout=20.0, what='every frame sent received and processed or dropped')
        n = len(rig.diags)
        wait_for(lambda: len(rig.diags) >= n + 1, timeout=5.0, what='one more report')
        st = rig.statuses()
        for c in CAMS:
            status, v = st[c]
            skipped = len(SKIPPED.get(c, ()))
            with rig.lock:
                masks = len(rig.masks[c])
            # a reliable subscriber that keeps up receives every mask the node published
            assert masks == int(v['frames_processed']), (c, masks, v['frames_processed'])
            # every frame is masked, dropped by the node, or counted missing from the stamp gaps
            assert masks + int(v['dropped_frames']) + int(v['frames_missing']) == ticks[c], (c, v)
            assert int(v['frames_missing']) == skipped, (c, v['frames_missing'])
            assert float(v['rate_window_s']) > 1.0
            assert int(v['output_subscribers']) >= 1        # the publisher's matched events (Jazzy and later)
            assert float(v['expected_frequency']) == RATES[c]
        # while streaming, every camera at its own expected rate: no rate WARN in any report (the 2 Hz one included)
        assert len(during) >= 2
        for arr in during:
            for s in arr.status:
                assert 'below half the expected' not in s.message, (s.name, s.message)
        slow = {kv.key: kv.value for s in during[-1].status if s.name.endswith('camera slow') for kv in s.values}
        assert float(slow['input_rate_hz']) == pytest.approx(2.0, abs=0.25)
        engine = st['engine'][1]
        # the test engine has a static batch of 1: one engine run per frame, whatever the set size
        assert int(engine['batches']) == int(engine['frames']) == sum(int(st[c][1]['frames_processed'])
                                                                       for c in CAMS)
        assert engine['mean_batch_size'] == '1.00' and engine['batch_sizes'] == f'1:{engine["batches"]}'
        assert engine['batching.max_batch'] == '1' and 'batching.cost_ms.b1' in engine
    finally:
        rig.close()


def test_the_missing_frames_warning_names_the_transport_and_the_fix() -> None:
    pytest.importorskip('diagnostic_msgs')
    from evit_ros.config import DiagnosticsConfig
    from evit_ros.ros.diagnostics import CameraStats
    st = CameraStats('cam1', '/cam1/image_raw', ('road',))
    st.input_qos, st.input_depth = 'reliable', 5
    t0 = st.created
    for i in [k for k in range(30) if k not in (10, 11, 20)]:
        st.on_receive(1000, int((5.0 + 0.1 * i) * 1e9), now=t0 + 0.1 * i)
    s = st.status('n', DiagnosticsConfig(), now=t0 + 3.0)
    v = {kv.key: kv.value for kv in s.values}
    assert v['frames_missing'] == '3' and v['stamp_period_ms'] == '100.0'
    assert s.level == b'\x01' and '3 frame(s) missing' in s.message and 'transport' in s.message
    assert 'qos.input_depth (now 5;' in s.message and 'fastdds_large_frames.xml' in s.message
    s = st.status('n', DiagnosticsConfig(), now=t0 + 3.1)
    assert 'missing' not in s.message          # reported once, in the report after it happened


def test_engine_counts_runs_and_the_latency_warning_says_where_the_time_goes() -> None:
    from evit_ros.config import DiagnosticsConfig
    from evit_ros.ros.diagnostics import CameraStats, EngineStats
    e = EngineStats({'backend': 'onnxruntime'})
    for n in (2, 2, 2, 1):           # four cameras on an engine of max batch 2, then a set of three
        e.on_batch(n, {'infer': 10.0 * n})
    v = {kv.key: kv.value for kv in e.status('n', DiagnosticsConfig()).values}
    assert (v['batches'], v['frames'], v['mean_batch_size'], v['batch_sizes']) == ('4', '7', '1.75', '1:1,2:3')
    assert v['counts_window'] == 'since start' and v['latency_window'] == 'last 256 engine runs'
    assert float(v['latency.infer.max_ms']) == 20.0
    st = CameraStats('cam0', '/cam0/image_raw', ('road',))
    for _ in range(10):
        st.on_receive(1000, receive_ms=90.0)
        st.on_result({'infer': 20.0, 'host': 3.0, 'end_to_end': 130.0}, None, {})
    s = st.status('n', DiagnosticsConfig(latency_budget_ms=100.0))
    assert s.level == b'\x02' and 'stamp to callback (camera, transport, executor) 90 ms' in s.message
    assert 'inference 20 ms' in s.message


def test_publisher_side_events_are_counted_and_an_incompatible_subscriber_warns() -> None:
    from evit_ros.config import DiagnosticsConfig
    from evit_ros.ros.diagnostics import CameraStats
    st = CameraStats('cam0', '/cam0/image_raw', ('road',))
    st.on_output_event('matched', 2)
    st.on_output_event('matched', -1)
    st.on_output_event('incompatible_qos', 1)
    s = st.status('n', DiagnosticsConfig())
    v = {kv.key: kv.value for kv in s.values}
    assert v['output_subscribers'] == '1' and v['output_events.unmatched'] == '1'
    assert v['output_events.incompatible_qos'] == '1' and 'receive nothing' in s.message


def test_the_worker_waits_briefly_for_the_rest_of_a_synchronised_set() -> None:
    """Frames of one instant from a synchronised rig are taken as one set (so the rotation decides the order,
    not which camera's frame arrived first); cameras out of step are never waited for, and the wait is bounded."""
    from types import SimpleNamespace

    from evit_ros.config import CameraConfig
    from evit_ros.ros.diagnostics import CameraStats
    from evit_ros.ros.worker import GATHER_S, Camera, FrameWorker, in_step

    class Clock:
        def now(self):
            return SimpleNamespace(nanoseconds=0)

    def msg(stamp_ns: int):
        return SimpleNamespace(data=b'x', header=SimpleNamespace(stamp=SimpleNamespace(
            sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)))

    cams = {n: Camera(CameraConfig(n), CameraStats(n, f'/{n}', ('road',))) for n in ('a', 'b', 'c')}
    cams['a'].last_stamp_ns = cams['b'].last_stamp_ns = 5_000_000_000      # a and b were in step
    cams['c'].last_stamp_ns = 5_040_000_000                                # c is not
    w = FrameWorker(None, Clock(), lambda: None)
    w.accept()
    w.offer(cams['a'], msg(5_100_000_000))
    assert in_step(cams.values()) == [cams['b']]
    threading.Timer(0.003, lambda: w.offer(cams['b'], msg(5_100_000_000))).start()
    t0 = time.monotonic()
    with w.cond:
        w._gather(cams)
    waited = time.monotonic() - t0
    assert cams['b'].pending is not None and waited < GATHER_S + 0.05       # b joined the set
    cams['b'].pending = None
    t0 = time.monotonic()
    with w.cond:                   # b's frame was lost: the wait ends at the bound
        w._gather(cams)
    assert GATHER_S * 0.9 <= time.monotonic() - t0 < GATHER_S + 0.05
    cams['a'].pending = None
    w.offer(cams['c'], msg(5_140_000_000))
    t0 = time.monotonic()
    with w.cond:                   # c has no camera in step: no wait at all
        w._gather(cams)
    assert time.monotonic() - t0 < GATHER_S / 2 and in_step(cams.values()) == []
