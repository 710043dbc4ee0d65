"""The node as a separate process, started the way the launch file starts it (shipped YAML, namespace,
use_sim_time, log level) plus a small-size override file; clean SIGINT/SIGTERM shutdown, fail-fast startup;
and the launch file itself (parsed with ``ast``: the launch wheels do not exist on PyPI)."""
from __future__ import annotations

import ast
import configparser
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime')

from node_onnx import node_onnx  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from evit_ros.ros import conversions as conv  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch' / 'segmentation.launch.py'
YAML = REPO / 'config' / 'evit_ros.yaml'
SMALL = """/**:
  ros__parameters:
    backend: {threads: 1}
    input: {height: 64, width: 128}
"""


def _launch_tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ''


def _launch_node_args() -> dict:
    """Keyword arguments of the launch file's segmentation Node(...) as source strings."""
    for n in ast.walk(_launch_tree()):
        if isinstance(n, ast.Call) and _call_name(n) == 'Node':
            kw = {k.arg: ast.unparse(k.value) for k in n.keywords}
            if 'segmentation_node' in kw.get('executable', ''):
                return kw
    raise AssertionError('no Node(executable=segmentation_node) in the launch file')


def node_command(tmp: Path, namespace: str, use_sim_time: bool, extra: list[str] | None = None) -> list[str]:
    """What launch_ros runs for the launch file's Node (name, namespace, params file, use_sim_time, log level)."""
    small = tmp / 'small.yaml'
    small.write_text(SMALL)
    return [sys.executable, '-m', 'evit_ros.ros.segmentation_node', '--ros-args', '--log-level',
            f'{namespace.strip("/").replace("/", ".") + "." if namespace.strip("/") else ""}evit_segmentation:=info',
            '-r', '__node:=evit_segmentation', '-r', f'__ns:={namespace}', '--params-file', str(YAML),
            '--params-file', str(small), '-p', f'use_sim_time:={"true" if use_sim_time else "false"}',
            *(extra or [])]


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, 'PYTHONPATH': str(REPO), 'EVIT_ROS_CACHE': str(tmp / 'cache'),
            'RCUTILS_LOGGING_BUFFERED_STREAM': '0'}


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('evit_cache')


@pytest.fixture(scope='module')
def given_onnx(tmp_path_factory) -> list[str]:
    """No extra arguments where PyTorch is installed: the node exports its ONNX at startup, as launched. Without
    PyTorch (``make test-compat``, like a vehicle without it) the node is given the file exported beforehand."""
    if importlib.util.find_spec('torch') is not None:
        return []
    return ['-p', f'backend.onnx_path:={node_onnx("b0_64x128.onnx", tmp_path_factory.mktemp("onnx"))}']


def test_launch_file_declares_the_documented_arguments_and_files() -> None:
    tree = _launch_tree()
    declared = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and _call_name(n) == 'DeclareLaunchArgument':
            name = ast.literal_eval(n.args[0])
            declared[name] = {k.arg: ast.unparse(k.value) for k in n.keywords}
    assert set(declared) == {'params_file', 'namespace', 'use_sim_time', 'rviz', 'log_level', 'autostart',
                             'fastdds_profile'}
    assert all(d.get('description') for d in declared.values())
    assert "'config', 'evit_ros.yaml'" in declared['params_file']['default_value']
    assert 'FindPackageShare' in ast.unparse(tree)   # the installed share directory via the ament index
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    for f in ('evit_ros.yaml', 'evit_ros.rviz'):
        assert f in strings and (REPO / 'config' / f).is_file()
    kw = _launch_node_args()
    assert kw['name'] == 'NODE_NAME' and "NODE_NAME = 'evit_segmentation'" in LAUNCH.read_text()
    assert kw['package'] == 'PACKAGE'
    assert 'params_file' in kw['parameters'] and 'use_sim_time' in kw['parameters']
    assert "'lifecycle.autostart': autostart" in kw['parameters']
    assert kw['namespace'] == 'namespace' and 'log_level' in kw['arguments']
    assert 'rviz2_installed' in ast.unparse(tree), 'rviz must be conditional on rviz2 being installed'
    # the executable exists as a console script, and setup.py installs launch/ and config/
    setup = (REPO / 'setup.py').read_text()
    assert "'segmentation_node = evit_ros.ros.segmentation_node:main'" in setup
    assert "glob('launch/*.launch.py')" in setup and "glob('config/*.rviz')" in setup
    cfg = configparser.ConfigParser()
    cfg.read(REPO / 'setup.cfg')
    assert cfg['install']['install_scripts'] == '$base/lib/evit_ros'


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            tail = log.read_text()[-3000:]
            raise AssertionError(f'node exited ({proc.returncode}) while waiting for {what}:\n{tail}')
        time.sleep(0.02)
    raise AssertionError(f'timed out waiting for {what}:\n{log.read_text()[-3000:]}')


def _stop(proc: subprocess.Popen, sig: int) -> tuple[int, float]:
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return rc, time.monotonic() - t0


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['sigint', 'sigterm'])
def test_node_process_as_launched_segments_and_stops_within_2s(tmp_path, cache_dir, given_onnx, sig) -> None:
    log = tmp_path / 'node.log'
    ns = '/car1'
    with open(log, 'w') as out:
        proc = subprocess.Popen(node_command(tmp_path, ns, use_sim_time=False, extra=given_onnx), stdout=out,
                                stderr=subprocess.STDOUT, env=_env(cache_dir))
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    tester = rclpy.create_node('process_tester', context=ctx)
    got: list[Image] = []
    lock = threading.Lock()

    def on_mask(msg: Image) -> None:
        with lock:
            got.append(msg)

    mask_topic = f'{ns}/segmentation/front/mask'
    tester.create_subscription(Image, mask_topic, on_mask, 10)
    pub = tester.create_publisher(Image, '/front/image_raw', 10)
    executor = rclpy.executors.SingleThreadedExecutor(context=ctx)
    executor.add_node(tester)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        _wait(lambda: pub.get_subscription_count() > 0 and tester.count_publishers(mask_topic) > 0, 90,
              'the node to subscribe and advertise', proc, log)
        rgb = np.random.default_rng(1).integers(0, 256, (90, 150, 3), dtype=np.uint8)
        msg = conv.numpy_to_image(rgb, 'rgb8')
        msg.header.frame_id = 'front_optical'
        msg.header.stamp = tester.get_clock().now().to_msg()

        def received() -> bool:
            with lock:
                if got:
                    return True
            pub.publish(msg)   # best-effort input, and the node must first see our subscription: resend
            time.sleep(0.2)
            return False

        _wait(received, 30, 'a mask', proc, log)
        m = got[0]
        assert (m.encoding, m.height, m.width) == ('mono8', 90, 150)
        assert m.header.frame_id == 'front_optical' and m.header.stamp == msg.header.stamp
        assert conv.image_to_numpy(m).max() < 19
        rc, took = _stop(proc, sig)
        text = log.read_text()
        assert rc == 0, text[-3000:]
        assert took < 2.0, f'shutdown took {took:.2f} s'
        assert 'ready:' in text and 'input 64x128' in text
        assert '/car1/segmentation/front' in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        executor.shutdown(timeout_sec=1.0)
        spin.join(timeout=2.0)
        tester.destroy_node()
        rclpy.shutdown(context=ctx)


@pytest.mark.parametrize(('bad', 'needles'), [
    ({'input': {'height': 100}}, ['input.height']),
    ({'cameras.front': {'transport': 'carrier_pigeon'}}, ['cameras.front.transport', 'raw, compressed']),
    ({'backend': {'type': 'tensorrt', 'engine_path': '/nonexistent/b0.engine'}}, ['evit-ros build-engine']),
], ids=['range', 'choice', 'missing-engine'])
def test_bad_configuration_fails_fast_with_the_fix(tmp_path, cache_dir, bad, needles) -> None:
    import yaml
    bad_file = tmp_path / 'bad.yaml'
    bad_file.write_text(yaml.safe_dump({'/**': {'ros__parameters': bad}}))
    t0 = time.monotonic()
    proc = subprocess.run(node_command(tmp_path, '/', use_sim_time=False, extra=['--params-file', str(bad_file)]),
                          capture_output=True, text=True, env=_env(cache_dir), timeout=60)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    assert 'startup failed' in text
    for needle in needles:
        assert needle in text, text[-3000:]
    assert time.monotonic() - t0 < 30


def _unshare_mount(cache: Path, options: str) -> list[str] | None:
    """A command prefix that runs under a private tmpfs at ``cache`` (a user+mount namespace), or None."""
    import shutil
    if shutil.which('unshare') is None or shutil.which('mount') is None:
        return None
    prefix = ['unshare', '-rm', 'sh', '-c', f'mount -t tmpfs -o {options} tmpfs "$0" && exec "$@"', str(cache)]
    if subprocess.run([*prefix, 'true'], capture_output=True, timeout=10).returncode != 0:
        return None
    return prefix


@pytest.mark.skipif(importlib.util.find_spec('torch') is None,
                    reason='without PyTorch no export can run: the node says so first (the torchless vehicle case)')
@pytest.mark.parametrize('fault', ['file-in-place', 'full-disk', 'read-only'])
def test_unwritable_cache_fails_before_the_export_with_both_fixes(tmp_path, fault) -> None:
    """Cache faults ended with one FATAL line only after the whole export and verification, and a full disk
    said `OSError: [Errno 28] No space left on device` with no path and no fix."""
    cache = tmp_path / 'cache'
    prefix: list[str] = []
    if fault == 'file-in-place':
        cache.write_text('not a folder')
        cause = f'{cache} is a file, not a folder'
    else:
        cache.mkdir()
        got = _unshare_mount(cache, 'size=64k' if fault == 'full-disk' else 'ro,size=64k')
        if got is None:
            pytest.skip('no unshare/mount namespaces here for a real tmpfs')
        prefix = got
        cause = 'no space left on device (ENOSPC' if fault == 'full-disk' else 'read-only file system (EROFS)'
    env = {**_env(tmp_path), 'EVIT_ROS_CACHE': str(cache)}
    t0 = time.monotonic()
    proc = subprocess.run([*prefix, *node_command(tmp_path, '/', use_sim_time=False)], capture_output=True,
                          text=True, env=env, timeout=90)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    fatal = [ln for ln in text.splitlines() if 'FATAL' in ln]
    assert len(fatal) == 1 and 'Traceback' not in text, text[-3000:]
    assert f'cannot write the ONNX cache {cache}/onnx' in fatal[0] and cause in fatal[0], fatal[0]
    assert 'Set EVIT_ROS_CACHE to a writable folder' in fatal[0] and 'set backend.onnx_path to an existing' in fatal[0]
    assert 'exporting' not in text, 'the check must come before the slow export'
    assert time.monotonic() - t0 < 30
