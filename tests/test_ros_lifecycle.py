"""The managed (lifecycle) node over real DDS, driven the way ``ros2 lifecycle set`` and Nav2's lifecycle manager
drive it: through the node's ``change_state``/``get_state`` services. Every transition, a configure that fails
on a missing ONNX/engine (FAILURE, reason in diagnostics, a retry after fixing the parameter succeeds), and
deactivate/activate under a running frame stream with no lost, doubled or half-published outputs."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime')
pytest.importorskip('lifecycle_msgs')

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from test_ros_node import InProcessNode, export_test_onnx, wait_for  # noqa: E402

from evit_ros.ros import conversions as conv  # noqa: E402
from evit_ros.ros.node import SegmentationNode  # noqa: E402

RELIABLE = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
NODE = '/evit_segmentation'


@pytest.fixture(scope='module')
def onnx(tmp_path_factory) -> Path:
    return export_test_onnx(tmp_path_factory.mktemp('onnx'))


class Managed(InProcessNode):
    """The node with lifecycle.autostart=false, a tester node (camera publisher, output subscribers, lifecycle
    and parameter clients) and one executor thread, as a lifecycle manager would see them."""

    def __init__(self, **params: Any) -> None:
        flat = {'lifecycle.autostart': False, 'backend.type': 'onnxruntime', 'backend.threads': 1,
                'input.height': 64, 'input.width': 128, 'cameras': ['front'], 'qos.input_reliability': 'reliable',
                'qos.input_depth': 50, 'qos.output_depth': 50, 'diagnostics.silence_timeout_s': 60.0,
                'diagnostics.expected_rate_hz': 0.1}
        flat.update(params)
        self._create([Parameter(k, value=v) for k, v in flat.items()], 'lifecycle_tester')
        t = self.tester
        self.lock = threading.Lock()
        self.outputs: dict[str, list[Time]] = {'mask': [], 'confidence': []}
        self.diags: list[DiagnosticArray] = []
        self.camera = t.create_publisher(Image, '/front/image_raw', RELIABLE)
        for name in self.outputs:
            t.create_subscription(Image, f'/segmentation/front/{name}', self._collector(name), RELIABLE)
        t.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)
        self.change = t.create_client(ChangeState, f'{NODE}/change_state')
        self.get = t.create_client(GetState, f'{NODE}/get_state')
        self.params = t.create_client(SetParameters, f'{NODE}/set_parameters')
        self._spin()
        wait_for(lambda: self.change.service_is_ready() and self.get.service_is_ready(), what='lifecycle services')

    def _collector(self, name: str) -> Any:
        def cb(msg: Image) -> None:
            with self.lock:
                self.outputs[name].append(msg.header.stamp)
        return cb

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diags.append(msg)

    def _call(self, client: Any, request: Any, timeout: float = 60.0) -> Any:
        return call_service(client, request, timeout)

    def transition(self, tid: int) -> bool:
        """``ros2 lifecycle set``: the node's change_state service; True on SUCCESS."""
        return change_state(self.change, self.get, Transition(id=tid))

    def state(self) -> str:
        return self._call(self.get, GetState.Request()).current_state.label

    def set_string(self, name: str, value: str) -> bool:
        wait_for(self.params.service_is_ready, what='set_parameters service')
        req = SetParameters.Request(parameters=[ParameterMsg(name=name, value=ParameterValue(
            type=ParameterType.PARAMETER_STRING, string_value=value))])
        return self._call(self.params, req).results[0].successful

    def lifecycle_diag(self, after: int) -> dict[str, Any]:
        """The first node-level status (lifecycle or engine) published after diagnostics message ``after``."""
        box: dict[str, Any] = {}

        def got() -> bool:
            with self.lock:
                arrs = self.diags[after:]
            for arr in arrs:
                for st in arr.status:
                    values = {kv.key: kv.value for kv in st.values}
                    if st.name.endswith(': lifecycle') or 'lifecycle_state' in values:
                        box.update(values, level=st.level, message=st.message, name=st.name)
                        return True
            return False
        wait_for(got, timeout=5.0, what='a diagnostics report with the lifecycle state')
        return box

    def frame(self, i: int) -> Image:
        rng = np.random.default_rng(i)
        img = rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)
        return conv.numpy_to_image(img, 'rgb8', _header(i))


GOAL = {Transition.TRANSITION_CONFIGURE: 'inactive', Transition.TRANSITION_ACTIVATE: 'active',
        Transition.TRANSITION_DEACTIVATE: 'inactive', Transition.TRANSITION_CLEANUP: 'unconfigured',
        Transition.TRANSITION_ACTIVE_SHUTDOWN: 'finalized', Transition.TRANSITION_INACTIVE_SHUTDOWN: 'finalized',
        Transition.TRANSITION_UNCONFIGURED_SHUTDOWN: 'finalized'}
LABELS = {'configure': Transition.TRANSITION_CONFIGURE, 'activate': Transition.TRANSITION_ACTIVATE}


def call_service(client: Any, request: Any, timeout: float = 60.0, attempt_s: float = 5.0) -> Any:
    """Call an idempotent service, asking again when no response came within ``attempt_s``: a response can be
    lost while the server has not yet discovered the client's response reader (``service_is_ready`` only
    covers the request direction)."""
    deadline = time.monotonic() + timeout
    while True:
        fut = client.call_async(request)
        end = min(deadline, time.monotonic() + attempt_s)
        while time.monotonic() < end and not fut.done():
            time.sleep(0.01)
        if fut.done():
            return fut.result()
        client.remove_pending_request(fut)
        if time.monotonic() >= deadline:
            raise AssertionError(f'no response from {client.srv_name} within {timeout} s')


def change_state(change: Any, get: Any, transition: Transition, attempt_s: float = 10.0) -> bool:
    """change_state once (not idempotent); when its response does not come, the node's state (get_state is
    answered only after the transition callback returned: one executor) tells whether it succeeded."""
    fut = change.call_async(ChangeState.Request(transition=transition))
    end = time.monotonic() + attempt_s
    while time.monotonic() < end and not fut.done():
        time.sleep(0.01)
    if fut.done():
        return bool(fut.result().success)
    change.remove_pending_request(fut)
    tid = transition.id or LABELS[transition.label]
    return call_service(get, GetState.Request()).current_state.label == GOAL[tid]


def _header(i: int) -> Any:
    from std_msgs.msg import Header
    return Header(stamp=Time(sec=100 + i // 1000, nanosec=(i % 1000) * 1_000_000), frame_id='front')


def test_every_transition_through_the_lifecycle_services(onnx) -> None:
    m = Managed(**{'backend.onnx_path': str(onnx)})
    try:
        # unconfigured: no engine, no camera subscription, no output publisher; diagnostics say so
        assert m.state() == 'unconfigured' and m.node.backend is None
        assert m.camera.get_subscription_count() == 0
        assert m.tester.count_publishers('/segmentation/front/mask') == 0
        diag = m.lifecycle_diag(len(m.diags))
        assert diag['lifecycle_state'] == 'unconfigured' and diag['level'] == b'\x00'

        assert m.transition(Transition.TRANSITION_CONFIGURE)
        assert m.state() == 'inactive' and m.node.backend is not None
        wait_for(lambda: m.tester.count_publishers('/segmentation/front/mask') == 1, what='mask publisher')
        assert m.camera.get_subscription_count() == 0       # inactive: nothing subscribed, nothing processed
        assert m.lifecycle_diag(len(m.diags))['lifecycle_state'] == 'inactive'

        assert m.transition(Transition.TRANSITION_ACTIVATE)
        assert m.state() == 'active'
        wait_for(lambda: m.camera.get_subscription_count() == 1, what='camera subscription')
        m.camera.publish(m.frame(1))
        wait_for(lambda: len(m.outputs['mask']) == 1, what='a mask while active')
        assert m.lifecycle_diag(len(m.diags))['lifecycle_state'] == 'active'

        assert m.transition(Transition.TRANSITION_DEACTIVATE)
        assert m.state() == 'inactive'
        wait_for(lambda: m.camera.get_subscription_count() == 0, what='camera unsubscribed')
        assert not m.node.worker_alive()

        assert m.transition(Transition.TRANSITION_ACTIVATE)       # again: subscriptions and worker come back
        wait_for(lambda: m.camera.get_subscription_count() == 1, what='camera subscription again')
        m.camera.publish(m.frame(2))
        wait_for(lambda: len(m.outputs['mask']) == 2, what='a mask after re-activation')

        backend = m.node.backend
        assert m.transition(Transition.TRANSITION_DEACTIVATE)
        assert m.transition(Transition.TRANSITION_CLEANUP)        # releases the engine
        assert m.state() == 'unconfigured'
        assert m.node.backend is None and backend._session is None
        wait_for(lambda: m.tester.count_publishers('/segmentation/front/mask') == 0, what='publishers gone')

        # a transition that does not exist from here is refused, the state stays
        assert not m.transition(Transition.TRANSITION_ACTIVATE)
        assert m.state() == 'unconfigured'

        # shutdown from active (configure + activate first) ends in finalized with everything released
        assert m.transition(Transition.TRANSITION_CONFIGURE) and m.transition(Transition.TRANSITION_ACTIVATE)
        assert m.transition(Transition.TRANSITION_ACTIVE_SHUTDOWN)
        assert m.state() == 'finalized'
        assert m.node.backend is None and not m.node.worker_alive()
        wait_for(lambda: m.camera.get_subscription_count() == 0, what='camera unsubscribed at shutdown')
    finally:
        m.close()


@pytest.mark.parametrize('params', [
    {'backend.onnx_path': '/nonexistent/model.onnx'},
    {'backend.type': 'tensorrt', 'backend.engine_path': '/nonexistent/model.engine'},
], ids=['missing-onnx', 'missing-engine'])
def test_configure_fails_on_a_missing_model_and_succeeds_once_fixed(onnx, params) -> None:
    m = Managed(**params)
    try:
        assert not m.transition(Transition.TRANSITION_CONFIGURE)    # FAILURE, not a crash
        assert m.state() == 'unconfigured' and m.node.backend is None
        diag = m.lifecycle_diag(len(m.diags))
        assert diag['level'] == b'\x02' and 'nonexistent' in diag['last_transition_error'], diag
        assert 'configure' in diag['message'] or 'failed' in diag['message']
        # unconfigured: restart-only parameters can be changed (they are read at configure)
        assert m.set_string('backend.type', 'onnxruntime') and m.set_string('backend.onnx_path', str(onnx))
        assert m.transition(Transition.TRANSITION_CONFIGURE)
        assert m.state() == 'inactive'
        assert m.lifecycle_diag(len(m.diags))['last_transition_error'] == ''
        # configured: a restart-only parameter is refused again
        assert not m.set_string('backend.onnx_path', '/elsewhere.onnx')
        assert m.transition(Transition.TRANSITION_INACTIVE_SHUTDOWN) and m.state() == 'finalized'
    finally:
        m.close()


def test_deactivate_activate_under_a_frame_stream_loses_and_doubles_nothing(onnx) -> None:
    m = Managed(**{'backend.onnx_path': str(onnx)})
    stop = threading.Event()
    sent: list[int] = []

    def stream() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            m.camera.publish(m.frame(i))
            sent.append(i)
            time.sleep(0.02)   # ~50 Hz offered; the node keeps the newest frame when it falls behind

    try:
        assert m.transition(Transition.TRANSITION_CONFIGURE) and m.transition(Transition.TRANSITION_ACTIVATE)
        wait_for(lambda: m.camera.get_subscription_count() == 1, what='camera subscription')
        feeder = threading.Thread(target=stream, daemon=True)
        feeder.start()
        n_cycles = 4
        for cycle in range(n_cycles):
            before = len(m.outputs['mask'])
            wait_for(lambda b=before: len(m.outputs['mask']) >= b + 3, timeout=30.0, what=f'outputs in cycle {cycle}')
            assert m.transition(Transition.TRANSITION_DEACTIVATE)
            with m.lock:
                at_deactivate = {k: len(v) for k, v in m.outputs.items()}
            time.sleep(0.3)        # frames keep coming while inactive: none is processed or published
            with m.lock:
                assert {k: len(v) for k, v in m.outputs.items()} == at_deactivate
            assert m.transition(Transition.TRANSITION_ACTIVATE)
        stop.set()
        feeder.join()
        cam = m.node.cameras['front']
        # every frame the node accepted was published completely (mask AND confidence) exactly once, or was
        # replaced by a newer one before the worker took it (counted as dropped); the inactive windows show up
        # as frames never received, not as lost outputs
        wait_for(lambda: not m.node._worker.busy and cam.pending is None, what='the worker to finish')
        wait_for(lambda: len(m.outputs['mask']) == cam.stats.processed, what='the last outputs to arrive')
        wait_for(lambda: len(m.outputs['confidence']) == cam.stats.processed, what='the last confidences')
        with m.lock:
            masks = [(s.sec, s.nanosec) for s in m.outputs['mask']]
            confs = [(s.sec, s.nanosec) for s in m.outputs['confidence']]
        assert len(masks) == len(set(masks)), 'a frame was published twice'
        assert set(masks) == set(confs), 'a frame was half published'
        assert masks == sorted(masks), 'outputs out of order'
        assert cam.stats.received == cam.stats.processed + cam.stats.dropped + sum(cam.stats.bad.values())
        assert cam.stats.received < len(sent)     # the inactive windows really dropped input
        assert len(masks) >= 3 * n_cycles
    finally:
        stop.set()
        m.close()


def test_autostart_default_configures_and_activates_in_the_constructor(onnx) -> None:
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = SegmentationNode(context=ctx, parameter_overrides=[
            Parameter('backend.type', value='onnxruntime'), Parameter('backend.onnx_path', value=str(onnx)),
            Parameter('input.height', value=64), Parameter('input.width', value=128)])
        try:
            assert node.lifecycle_state == 'active' and node.worker_alive()
            assert node._state_machine.current_state[1] == 'active'
            assert State.PRIMARY_STATE_ACTIVE == node._state_machine.current_state[0]
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_deactivate_waits_for_the_frame_in_flight_and_publishes_all_of_it(onnx) -> None:
    m = Managed(**{'backend.onnx_path': str(onnx)})
    try:
        assert m.transition(Transition.TRANSITION_CONFIGURE) and m.transition(Transition.TRANSITION_ACTIVATE)
        wait_for(lambda: m.camera.get_subscription_count() == 1, what='camera subscription')
        stage = m.node._outputs
        real_run = stage.run
        in_flight = threading.Event()

        def slow_run(*args: Any, **kwargs: Any) -> None:   # the real output stage, after a long "inference"
            in_flight.set()
            time.sleep(0.8)
            real_run(*args, **kwargs)

        stage.run = slow_run
        m.camera.publish(m.frame(7))
        wait_for(in_flight.is_set, what='the frame to reach the output stage')
        assert m.transition(Transition.TRANSITION_DEACTIVATE)   # called while the frame is in flight
        assert not m.node.worker_alive()
        # both outputs of that frame were published before the publishers were disabled
        wait_for(lambda: len(m.outputs['mask']) == 1 and len(m.outputs['confidence']) == 1, timeout=5.0,
                 what='mask and confidence of the frame in flight')
        assert m.outputs['mask'][0] == m.outputs['confidence'][0] == _header(7).stamp
        assert m.node.cameras['front'].stats.processed == 1
    finally:
        m.close()


def test_shutdown_from_unconfigured_then_every_transition_is_refused(onnx) -> None:
    m = Managed(**{'backend.onnx_path': str(onnx)})
    try:
        assert m.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        assert m.state() == 'finalized' and m.node.backend is None
        assert not m.transition(Transition.TRANSITION_CONFIGURE)   # refused, answered, the node still serves
        assert m.state() == 'finalized'
        assert m.lifecycle_diag(len(m.diags))['lifecycle_state'] == 'finalized'
    finally:
        m.close()
