"""The node process as a vehicle meets it: startup failures are one FATAL line and exit 2, signals during
startup exit 0 without a traceback, a node given an ONNX runs with neither torch nor onnx installed, reliable
cameras of real sizes get every frame with Fast DDS defaults, a fuzz corpus of hostile frames (bombs included)
costs bounded time and memory, and SIGINT after many frames still stops within 2 s."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from test_ros_node import export_test_onnx  # noqa: E402
from test_ros_process import _stop  # noqa: E402

from evit_ros.ros import conversions as conv  # noqa: E402
from evit_ros.ros.transport import BUILTIN_TRANSPORTS, PROFILES_FILE_FASTDDS2, PROFILES_FILE_FASTDDS3, SWITCH  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RELIABLE = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
NODE = 'evit_ros.ros.segmentation_node'
BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(','))
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Block())
del sys.argv[1]
import runpy
runpy.run_module('evit_ros.ros.segmentation_node', run_name='__main__')
"""


def _env(tmp: Path) -> dict[str, str]:
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'EVIT_ROS_CACHE': str(tmp / 'cache'),
           'RCUTILS_LOGGING_BUFFERED_STREAM': '0'}
    # Fast DDS defaults for the cameras (this process) and the layer; the node sets its own profile at start
    for var in (PROFILES_FILE_FASTDDS2, PROFILES_FILE_FASTDDS3, BUILTIN_TRANSPORTS, SWITCH):
        env.pop(var, None)
    return env


def _cmd(params: dict[str, str], blocked: tuple[str, ...] = ()) -> list[str]:
    ros = ['--ros-args']
    for k, v in params.items():
        ros += ['-p', f'{k}:={v}']
    if blocked:
        return [sys.executable, '-c', BLOCKER, ','.join(blocked), *ros]
    return [sys.executable, '-m', NODE, *ros]


@pytest.fixture(scope='module')
def onnx(tmp_path_factory) -> Path:
    return export_test_onnx(tmp_path_factory.mktemp('onnx'))


def _base(onnx: Path) -> dict[str, str]:
    return {'backend.type': 'onnxruntime', 'backend.onnx_path': str(onnx), 'backend.threads': '1',
            'input.height': '64', 'input.width': '128'}


def _assert_one_fatal(text: str) -> str:
    assert 'Traceback' not in text, text[-3000:]
    lines = [line for line in text.splitlines() if line.strip()]
    fatal = [line for line in lines if 'FATAL' in line]
    assert len(fatal) == 1 and len(lines) == 1, text[-3000:]
    return fatal[0]


# ---------------------------------------------------------------------------------------------------------------
# startup

@pytest.mark.parametrize(('make', 'needles'), [
    (lambda d: ['--params-file', str(d / 'missing.yaml')], ['missing.yaml', 'does not exist']),
    (lambda d: ['--params-file', str(_write(d / 'syntax.yaml', '/**:\n  ros__parameters:\n    cameras: [front\n'))],
     ['not valid YAML', 'line']),
    (lambda d: ['--params-file', str(_write(d / 'list.yaml', '- cameras: [front]\n'))],
     ['YAML list', 'ros__parameters']),
    (lambda d: ['-p', 'backend.onnx_path:='], ['backend.onnx_path', "''"]),
], ids=['missing-file', 'yaml-syntax', 'yaml-list', 'empty-override'])
def test_every_startup_failure_is_one_fatal_line_and_exit_2(tmp_path, make, needles) -> None:
    cmd = [sys.executable, '-m', NODE, '--ros-args', *make(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=60)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    line = _assert_one_fatal(text)
    for n in needles:
        assert n in line, line


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['sigint', 'sigterm'])
def test_signal_during_startup_exits_0_without_traceback(tmp_path, sig) -> None:
    """The node exports its ONNX at startup (backend.onnx_path empty, empty cache): interrupt that."""
    pytest.importorskip('torch', reason='interrupts the automatic ONNX export, which needs PyTorch')
    log = tmp_path / 'node.log'
    params = {'backend.type': 'onnxruntime', 'backend.threads': '1', 'input.height': '64', 'input.width': '128'}
    with open(log, 'w') as out:
        proc = subprocess.Popen(_cmd(params), stdout=out, stderr=subprocess.STDOUT, env=_env(tmp_path))
    try:
        deadline = time.monotonic() + 120
        while 'exporting' not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        t0 = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert 'Traceback' not in text and 'context is invalid' not in text and 'KeyboardInterrupt' not in text, text
    assert took < 10, took



def mask_then_sigint(t: Tester, pub: Any, proc: subprocess.Popen, log: Path) -> None:
    """One 48x64 frame in, its mask out, then SIGINT: the node exits 0 within 2 s."""
    m = t.closed_loop(pub, _rgb8((48, 64)), proc, log)
    assert (m.height, m.width) == (48, 64)
    rc, took = _stop(proc, signal.SIGINT)
    assert rc == 0 and took < 2.0, (rc, took, log.read_text()[-2000:])

def test_node_with_an_onnx_runs_without_torch_and_onnx(tmp_path, onnx) -> None:
    log = tmp_path / 'node.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen(_cmd(_base(onnx), blocked=('torch', 'onnx')), stdout=out, stderr=subprocess.STDOUT,
                                env=_env(tmp_path))
    with Tester() as t:
        try:
            pub = t.node.create_publisher(Image, '/front/image_raw', RELIABLE)
            t.wait(lambda: pub.get_subscription_count() > 0 and t.node.count_publishers('/segmentation/front/mask'),
                   60, 'node up', proc, log)
            mask_then_sigint(t, pub, proc, log)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert 'ready:' in text and 'Traceback' not in text


@pytest.mark.parametrize(('blocked', 'params', 'needles'), [
    (('onnxruntime',), 'onnx', ["'onnxruntime'", 'ONNX Runtime backend', 'pip install onnxruntime']),
    (('torch',), 'export', ["'torch'", 'automatic ONNX export', 'backend.onnx_path', 'pip install torch']),
], ids=['no-onnxruntime', 'no-torch-export'])
def test_missing_module_is_one_fatal_line_naming_module_user_and_install(tmp_path, onnx, blocked, params,
                                                                         needles) -> None:
    p = _base(onnx)
    if params == 'export':
        p.pop('backend.onnx_path')
    proc = subprocess.run(_cmd(p, blocked=blocked), capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    line = _assert_one_fatal(text)
    for n in needles:
        assert n in line, line


# ---------------------------------------------------------------------------------------------------------------
# real sizes, hostile frames, shutdown after many frames

class Tester:
    def __enter__(self) -> Tester:
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node('vehicle_process_tester', context=self.ctx)
        self.lock = threading.Lock()
        self.masks: dict[tuple[int, int], Any] = {}
        self.diag: dict[str, dict[str, str]] = {}
        self.node.create_subscription(Image, '/segmentation/front/mask', self._on('front'), RELIABLE)
        self.node.create_subscription(Image, '/segmentation/rear/mask', self._on('rear'), RELIABLE)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.seq = 0
        return self

    def _on(self, cam: str) -> Any:
        def cb(msg: Image) -> None:
            with self.lock:
                self.masks[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
        return cb

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            for st in msg.status:
                self.diag[st.name.split(': ', 1)[-1]] = {kv.key: kv.value for kv in st.values} | {
                    '_message': st.message}

    def wait(self, cond: Any, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if proc.poll() is not None:
                raise AssertionError(f'node exited ({proc.returncode}) waiting for {what}:\n{log.read_text()[-3000:]}')
            if time.monotonic() > deadline:
                raise AssertionError(f'timed out waiting for {what}:\n{log.read_text()[-3000:]}')
            time.sleep(0.005)

    def closed_loop(self, pub: Any, msg: Any, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> Image:
        """Publish once (reliable: no resend) and wait for the mask with this stamp."""
        self.seq += 1
        msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + self.seq, 0
        key = (1000 + self.seq, 0)
        pub.publish(msg)
        self.wait(lambda: key in self.masks, timeout, f'the mask of frame {self.seq}', proc, log)
        with self.lock:
            return self.masks.pop(key)

    def __exit__(self, *exc: Any) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.thread.join(timeout=2.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


def _rgb8(hw: tuple[int, int], seed: int = 0) -> Image:
    rgb = np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
    return conv.numpy_to_image(rgb, 'rgb8')


def _raw(encoding: str, h: int, w: int, step: int, data: bytes) -> Image:
    import array
    msg = Image(height=h, width=w, encoding=encoding, step=step)
    msg.data = array.array('B', data)
    return msg


def _compressed(data: bytes, fmt: str = 'jpeg') -> CompressedImage:
    import array
    msg = CompressedImage(format=fmt)
    msg.data = array.array('B', data)
    return msg


def _png_bomb(side: int = 16384) -> bytes:
    """A real grayscale PNG of side x side zeros (~268 MP decoded) in a few hundred KB, written row by row."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF)
    comp = zlib.compressobj(9)
    row = b'\x00' * (side + 1)
    idat = b''.join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack('>IIBBBBB', side, side, 8, 0, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', idat) + chunk(b'IEND', b'')


def _jpeg_claiming(w: int, h: int) -> bytes:
    ok, enc = cv2.imencode('.jpg', np.zeros((16, 16, 3), np.uint8))
    data = bytearray(enc.tobytes())
    i = data.find(b'\xff\xc0')
    data[i + 5:i + 9] = struct.pack('>HH', h, w)
    return bytes(data)


def fuzz_corpus() -> list[tuple[str, str, Any]]:
    """(name, camera, message): every case is a frame the node must refuse or survive."""
    rng = np.random.default_rng(7)
    good_jpeg = cv2.imencode('.jpg', rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))[1].tobytes()
    good_png = cv2.imencode('.png', rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))[1].tobytes()
    raw = [
        ('step-bomb', _raw('rgb8', 1, 1, 2**32 - 1, b'\x01\x02\x03')),
        ('step-bomb-2rows', _raw('rgb8', 2, 1, 2**31, b'\x01' * 6)),
        ('step-too-small', _raw('rgb8', 4, 4, 5, b'\x00' * 20)),
        ('zero-size', _raw('rgb8', 0, 0, 0, b'')),
        ('huge-dims-no-data', _raw('rgb8', 65535, 65535, 65535 * 3, b'\x00' * 30)),
        ('over-max-pixels', _raw('mono8', 5000, 4000, 4000, b'')),
        ('truncated', _raw('rgb8', 48, 64, 192, b'\x00' * 100)),
        ('too-long', _raw('rgb8', 4, 4, 12, b'\x00' * 100)),
        ('unknown-encoding', _raw('32FC1', 4, 4, 16, b'\x00' * 64)),
        ('empty-encoding', _raw('', 4, 4, 12, b'\x00' * 48)),
        ('odd-yuv-width', _raw('yuv422', 4, 5, 10, b'\x00' * 40)),
        ('odd-nv12-height', _raw('nv12', 5, 4, 4, b'\x00' * 30)),
        ('mono16-short-step', _raw('mono16', 4, 4, 6, b'\x00' * 24)),
        ('bayer-truncated', _raw('bayer_rggb8', 8, 8, 8, b'\x00' * 10)),
        ('outlier-4000x3000', _rgb8((3000, 4000), seed=2)),
    ]
    compressed = [
        ('png-bomb-16384', _compressed(_png_bomb(), 'png')),
        ('jpeg-claims-65500', _compressed(_jpeg_claiming(65500, 65500))),
        ('jpeg-claims-0', _compressed(_jpeg_claiming(0, 0))),
        ('jpeg-bogus-sof-in-limit', _compressed(_jpeg_claiming(3000, 2000))),
        ('empty', _compressed(b'')),
        ('random-bytes', _compressed(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())),
        ('jpeg-no-eoi', _compressed(good_jpeg[:-2])),
        ('jpeg-half', _compressed(good_jpeg[: len(good_jpeg) // 2])),
        ('jpeg-garbage-body', _compressed(good_jpeg[:2] + b'\x13' * 300 + good_jpeg[-2:])),
        ('jpeg-soi-only', _compressed(b'\xff\xd8\xff\xd9')),
        ('png-header-only', _compressed(good_png[:33], 'png')),
        ('png-truncated', _compressed(good_png[: len(good_png) // 2], 'png')),
        ('png-ihdr-huge', _compressed(good_png[:16] + struct.pack('>II', 2**31 - 1, 2**31 - 1) + good_png[24:], 'png')),
        ('gif', _compressed(b'GIF89a' + b'\x00' * 100, 'gif')),
    ]
    return [(n, 'front', m) for n, m in raw] + [(n, 'rear', m) for n, m in compressed]


def _rss_kib(pid: int) -> tuple[int, int]:
    """(current, peak) resident set of a process in KiB."""
    fields = {}
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        k, _, v = line.partition(':')
        fields[k] = v.strip()
    return int(fields['VmRSS'].split()[0]), int(fields['VmHWM'].split()[0])


@pytest.mark.skipif(not Path('/proc/self/status').is_file(), reason='needs /proc for RSS')
def test_real_sizes_fuzz_corpus_bounded_memory_and_fast_sigint_after_many_frames(tmp_path, onnx, capsys) -> None:
    params = {**_base(onnx), 'cameras': '[front, rear]', 'cameras.rear.transport': 'compressed',
              'outputs.overlay': 'false', 'outputs.confidence': 'false',
              'qos.input_depth': '5'}   # a bad frame then a good one: both reach the node, a replaced one is counted
    log = tmp_path / 'node.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen(_cmd(params), stdout=out, stderr=subprocess.STDOUT, env=_env(tmp_path))
    report: dict[str, Any] = {}
    try:
        with Tester() as t:
            # reliable, as camera drivers publish; depth 2 so a good frame never replaces the bad one before it
            qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
            front = t.node.create_publisher(Image, '/front/image_raw', qos)
            rear = t.node.create_publisher(CompressedImage, '/rear/image_raw/compressed', qos)
            t.wait(lambda: front.get_subscription_count() > 0 and rear.get_subscription_count() > 0
                   and t.node.count_publishers('/segmentation/front/mask') > 0, 90, 'node up', proc, log)
            good_jpeg = _compressed(cv2.imencode('.jpg', np.zeros((48, 64, 3), np.uint8))[1].tobytes())
            t.closed_loop(front, _rgb8((480, 640)), proc, log)   # warm up both paths
            t.closed_loop(rear, good_jpeg, proc, log)
            rss0, _ = _rss_kib(proc.pid)

            # 1. reliable cameras of real sizes with Fast DDS defaults, closed loop: every frame gets its mask
            for hw, n in (((480, 640), 30), ((1024, 2048), 10)):
                msg = _rgb8(hw)
                t0 = time.monotonic()
                for _ in range(n):
                    m = t.closed_loop(front, msg, proc, log)
                    assert (m.height, m.width) == hw
                dt = time.monotonic() - t0
                report[f'{hw[1]}x{hw[0]}'] = {'frames': n, 'masks': n, 'rate_hz': round(n / dt, 2),
                                              'frame_bytes': len(msg.data)}

            rss0, _ = _rss_kib(proc.pid)
            # 2. the fuzz corpus: each bad frame followed by a good one, which must get its mask
            corpus = fuzz_corpus()
            worst = 0.0
            for name, cam, bad in corpus:
                pub = front if cam == 'front' else rear
                bad.header.stamp.sec = 1
                pub.publish(bad)
                time.sleep(0.05)   # usually lets the worker see the bad frame alone (else it is counted as replaced)
                t0 = time.monotonic()
                t.closed_loop(pub, _rgb8((480, 640)) if cam == 'front' else good_jpeg, proc, log, timeout=20)
                worst = max(worst, time.monotonic() - t0)
                report.setdefault('good_after_bad_s', {})[name] = round(time.monotonic() - t0, 3)
                report.setdefault('rss_mib', {})[name] = _rss_kib(proc.pid)[0] // 1024
            rss1, peak = _rss_kib(proc.pid)
            report.update(corpus=len(corpus), rss_before_mib=rss0 // 1024, rss_after_mib=rss1 // 1024,
                          peak_rss_mib=peak // 1024, worst_good_after_bad_s=round(worst, 3))
            # a 268 MP PNG or a 4 GB step never got allocated; the 4000x3000 outlier's buffers were released
            assert peak - rss0 < 400 * 1024, report
            assert rss1 - rss0 < 60 * 1024, report
            assert worst < 5.0, report   # 1 s of processing is the promise; the margin is for a shared 2-core box

            # every bad frame was counted as bad (or replaced before the worker saw it), none as an engine failure
            t.wait(lambda: 'inference engine' in t.diag and 'camera rear' in t.diag, 10, 'diagnostics', proc, log)
            time.sleep(1.2)   # one more report period so the counters include the last frames
            with t.lock:
                engine, fr, rr = t.diag['inference engine'], t.diag['camera front'], t.diag['camera rear']
            assert engine['errors'] == '0', engine
            bad = int(fr['bad_frames']) + int(rr['bad_frames'])
            dropped = int(fr['dropped_frames']) + int(rr['dropped_frames'])
            # all but the outlier and the in-limit bogus JPEG (both decode) are bad frames; a replaced one is counted
            assert bad + dropped >= len(corpus) - 2 and bad >= len(corpus) // 2, (fr, rr)
            for key in ('bad_frames.step', 'bad_frames.size', 'bad_frames.corrupt', 'bad_frames.truncated'):
                assert key in fr or key in rr, key
            report['bad_frames'] = {k: v for d in (fr, rr) for k, v in d.items() if k.startswith('bad_frames.')}

            # 3. many frames, then SIGINT: still within 2 s
            small = _rgb8((120, 160))
            for _ in range(300):
                t.closed_loop(front, small, proc, log)
            rc, took = _stop(proc, signal.SIGINT)
            report['sigint_after_frames_s'] = round(took, 3)
            assert rc == 0 and took < 2.0, (rc, took, log.read_text()[-3000:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        (tmp_path / 'report.json').write_text(json.dumps(report, indent=1))
        with capsys.disabled():
            print('\nvehicle process report:', json.dumps(report))
    assert 'Traceback' not in log.read_text()
