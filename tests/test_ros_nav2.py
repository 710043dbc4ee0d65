"""The node as Nav2 meets it, in separate processes over real DDS.

- Managed start: the node process with ``lifecycle.autostart:=false`` stays unconfigured until a lifecycle client
  (what ``ros2 lifecycle set`` and Nav2's lifecycle manager call) configures and activates it; without vision_msgs
  it says once that label_info is off; SIGINT still ends it with exit 0.
- The semantic_segmentation_layer recipe: the layer subscribes mask and confidence with sensor-data QoS
  (best effort). A separate subscriber process does exactly that while the camera publishes real 1024x2048
  frames: masks at model resolution arrive with Fast DDS defaults, camera-resolution masks (2 MiB) arrive when
  both processes use the shipped Fast DDS profile (set in the variable this distro's Fast DDS reads: on Kilted
  the old name would print a deprecation warning first, before the layer's first line).
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime')
pytest.importorskip('lifecycle_msgs')

from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from node_onnx import needs_onnx_source, node_onnx  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from test_ros_lifecycle import call_service, change_state  # noqa: E402
from test_ros_vehicle_process import RELIABLE, Tester, _base, _cmd, _env, _rgb8, _stop, mask_then_sigint  # noqa: E402

from evit_ros.ros.diagnostics import profiles_file_variable  # noqa: E402
from evit_ros.ros.transport import SWITCH  # noqa: E402

needs_onnx_source()

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / 'config' / 'fastdds_large_frames.xml'
N_FRAMES = 6

# A stand-in for the layer's subscriptions: sensor-data QoS (best effort, keep last 5) on mask and confidence,
# in its own process. Warm-up frames (stamp sec < 1000) come first, until one mask and one confidence arrived:
# best effort loses what the node publishes before it has discovered this subscriber, and discovery takes
# seconds on a loaded machine. Then it prints 'matched', and once it has N_FRAMES of both among the measured
# frames (stamp sec >= 1000), or after the timeout, what arrived of those as JSON.
LAYER = """
import json, sys, time, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
n_want, timeout = int(sys.argv[1]), float(sys.argv[2])
rclpy.init()
node = rclpy.create_node('fake_semantic_segmentation_layer')
got = {'mask': {}, 'confidence': {}}
warm = set()
def on(name, m):
    if m.header.stamp.sec < 1000:
        warm.add(name)
    else:
        got[name][f'{m.header.stamp.sec}'] = [m.height, m.width, m.encoding]
for name in got:
    node.create_subscription(Image, f'/segmentation/front/{name}', lambda m, name=name: on(name, m),
                             qos_profile_sensor_data)
print('subscribed', flush=True)
deadline = time.monotonic() + timeout
while time.monotonic() < deadline and len(warm) < len(got):
    rclpy.spin_once(node, timeout_sec=0.05)
print('matched' if len(warm) == len(got) else 'never matched', flush=True)
while time.monotonic() < deadline and min(len(v) for v in got.values()) < n_want:
    rclpy.spin_once(node, timeout_sec=0.05)
print(json.dumps(got), flush=True)
"""


@pytest.fixture(scope='module')
def onnx64(tmp_path_factory) -> Path:
    return node_onnx('b0_64x128.onnx', tmp_path_factory.mktemp('onnx'))


@pytest.fixture(scope='module')
def onnx352(tmp_path_factory) -> Path:
    """b0 at 352x640 (about a 640x360 aligned-depth camera): 225 KB mono8 masks at model resolution."""
    return node_onnx('b0_352x640.onnx', tmp_path_factory.mktemp('onnx352'))


def test_managed_process_waits_unconfigured_then_runs_after_configure_activate(tmp_path, onnx64) -> None:
    log = tmp_path / 'node.log'
    params = {**_base(onnx64), 'lifecycle.autostart': 'false', 'backend.onnx_path': '/nonexistent/b0.onnx'}
    with open(log, 'w') as out:
        proc = subprocess.Popen(_cmd(params), stdout=out, stderr=subprocess.STDOUT, env=_env(tmp_path))
    with Tester() as t:
        try:
            change = t.node.create_client(ChangeState, '/evit_segmentation/change_state')
            get = t.node.create_client(GetState, '/evit_segmentation/get_state')
            t.wait(lambda: change.service_is_ready() and get.service_is_ready(), 60, 'lifecycle services', proc, log)
            pub = t.node.create_publisher(Image, '/front/image_raw', RELIABLE)

            assert call_service(get, GetState.Request()).current_state.label == 'unconfigured'
            assert pub.get_subscription_count() == 0 and 'ready:' not in log.read_text()
            # a failing configure is FAILURE with the reason logged; the process keeps serving
            assert not change_state(change, get, Transition(id=Transition.TRANSITION_CONFIGURE))
            assert 'configure failed' in log.read_text() and '/nonexistent/b0.onnx' in log.read_text()
            setp = t.node.create_client(SetParameters, '/evit_segmentation/set_parameters')
            t.wait(setp.service_is_ready, 30, 'set_parameters service', proc, log)
            value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(onnx64))
            res = call_service(setp, SetParameters.Request(parameters=[ParameterMsg(name='backend.onnx_path',
                                                                                   value=value)]))
            assert res.results[0].successful
            assert change_state(change, get, Transition(id=Transition.TRANSITION_CONFIGURE))
            # by label too, as ros2 lifecycle set can send it
            assert change_state(change, get, Transition(label='activate'))
            t.wait(lambda: pub.get_subscription_count() > 0, 30, 'camera subscription', proc, log)
            mask_then_sigint(t, pub, proc, log)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert 'Traceback' not in text and 'ready:' in text
    assert 'lifecycle.autostart=false' in text
    assert text.count('label_info is off') == 1 and 'vision_msgs' in text   # said once, with the reason


def _layer_recipe(tmp_path: Path, params: dict[str, str], env: dict[str, str],
                  layer_timeout_s: float = 120.0, node_env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Node and stand-in layer in their own processes (``env``; the node's ``node_env`` if given); the camera
    (this process) publishes N_FRAMES reliable 1024x2048 rgb8 frames, each after the previous mask reached a
    reliable subscriber here."""
    log = tmp_path / 'node.log'
    with open(log, 'w') as out:
        node = subprocess.Popen(_cmd(params), stdout=out, stderr=subprocess.STDOUT,
                                env=env if node_env is None else node_env)
    layer = subprocess.Popen([sys.executable, '-c', LAYER, str(N_FRAMES), str(layer_timeout_s)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in layer.stdout or []], daemon=True).start()
    try:
        with Tester() as t:
            pub = t.node.create_publisher(Image, '/front/image_raw', RELIABLE)
            first = lines.get(timeout=60)
            assert first == 'subscribed', first   # its first line: nothing printed before (e.g. a Fast DDS warning)
            t.wait(lambda: pub.get_subscription_count() > 0, 90, 'node up', node, log)
            # the layer's subscriptions are matched before the first frame (discovery, not a sleep)
            t.wait(lambda: t.node.count_subscribers('/segmentation/front/mask') >= 2
                   and t.node.count_subscribers('/segmentation/front/confidence') >= 1, 30, 'layer subscriptions',
                   node, log)
            frame = _rgb8((1024, 2048), seed=3)
            warm_up(t, pub, frame, lines, node, log)
            for _ in range(N_FRAMES):
                t.closed_loop(pub, frame, node, log, timeout=60.0)
            out = lines.get(timeout=60)
            rc, _ = _stop(node, signal.SIGINT)
            assert rc == 0, log.read_text()[-2000:]
    finally:
        for p in (node, layer):
            if p.poll() is None:
                p.kill()
                p.wait()
    return json.loads(out)


def warm_up(t: Tester, pub: Any, frame: Image, lines: queue.Queue[str], node: subprocess.Popen, log: Path) -> None:
    """Warm-up frames (stamp sec 1, 2, ...; each after its mask reached the reliable subscriber here) until the
    layer has received a mask and a confidence, i.e. the node has discovered its subscriptions."""
    deadline = time.monotonic() + 60
    sec = 0
    while True:
        try:
            said = lines.get_nowait()
            assert said == 'matched', said
            return
        except queue.Empty:
            pass
        assert time.monotonic() < deadline, 'the layer received no mask and confidence within 60 s of warm-up'
        sec += 1
        frame.header.stamp.sec, frame.header.stamp.nanosec = sec, 0
        pub.publish(frame)
        t.wait(lambda s=sec: (s, 0) in t.masks, 30, f'the mask of warm-up frame {sec}', node, log)
        time.sleep(0.05)


def test_layer_recipe_model_resolution_masks_arrive_best_effort_with_fast_dds_defaults(tmp_path, onnx352) -> None:
    params = {**_base(onnx352), 'input.height': '352', 'input.width': '640', 'outputs.mask_resolution': 'model',
              'outputs.confidence': 'true'}
    env = _env(tmp_path)   # _env drops any Fast DDS profile: defaults, and the node's own profile off too
    got = _layer_recipe(tmp_path, params, env, node_env={**env, SWITCH: 'off'})
    for name in ('mask', 'confidence'):
        assert len(got[name]) == N_FRAMES, (name, got[name])
        assert all(v == [352, 640, 'mono8'] for v in got[name].values())
    assert set(got['mask']) == set(got['confidence'])   # same stamps: the layer's time synchronizer pairs them


def test_layer_recipe_camera_resolution_masks_arrive_best_effort_with_the_profile(tmp_path, onnx64) -> None:
    env = {**_env(tmp_path), profiles_file_variable(): str(PROFILE)}
    params = {**_base(onnx64), 'outputs.mask_resolution': 'camera'}
    got = _layer_recipe(tmp_path, params, env)
    for name in ('mask', 'confidence'):
        assert len(got[name]) == N_FRAMES, (name, got[name])
        assert all(v == [1024, 2048, 'mono8'] for v in got[name].values())   # 2 MiB each


def test_camera_resolution_masks_arrive_best_effort_at_a_layer_on_defaults_with_the_nodes_own_profile(
        tmp_path, onnx64) -> None:
    """The node's own profile (segmentation_node sets it) sends masks through its 32 MiB shared-memory segment:
    a best-effort layer at Fast DDS defaults gets 2 MiB masks (with the node at defaults too: 0 of 6)."""
    params = {**_base(onnx64), 'outputs.mask_resolution': 'camera'}
    got = _layer_recipe(tmp_path, params, _env(tmp_path))
    for name in ('mask', 'confidence'):
        assert len(got[name]) == N_FRAMES, (name, got[name])
        assert all(v == [1024, 2048, 'mono8'] for v in got[name].values())


def test_layer_qos_constants_match_the_layer_contract() -> None:
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    from evit_ros.ros.node import LABEL_INFO_QOS
    assert LABEL_INFO_QOS.reliability == ReliabilityPolicy.RELIABLE
    assert LABEL_INFO_QOS.durability == DurabilityPolicy.TRANSIENT_LOCAL and LABEL_INFO_QOS.depth == 1
    assert os.path.isfile(PROFILE)
