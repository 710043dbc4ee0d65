"""``evit-ros play`` and ``evit-ros watch``: real rclpy over DDS, a bag and image folders written by the test."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from eval_support import write_bag

from evit_ros.cli.main import main
from evit_ros.errors import ConfigError, DataError

rclpy = pytest.importorskip('rclpy')

from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from evit_ros.ros.play import PlayOptions, folder_cameras, play  # noqa: E402
from evit_ros.ros.watch import WatchOptions, watch  # noqa: E402

pytestmark = pytest.mark.ros
H, W = 24, 32


class Listener:
    """A node in its own context that records what arrives on some topics (spun in a thread)."""

    def __init__(self, topics: dict[str, type], depth: int = 50) -> None:
        from rclpy.executors import SingleThreadedExecutor
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('test_listener', context=self.context)
        self.got: dict[str, list] = {t: [] for t in topics}
        for t, typ in topics.items():
            self.node.create_subscription(typ, t, lambda m, t=t: self.got[t].append(m), QoSProfile(depth=depth))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self.thread.join(timeout=2.0)


def _folder(root: Path, cams: tuple[str, ...], n: int) -> dict[str, list[np.ndarray]]:
    frames = {}
    rng = np.random.default_rng(0)
    for cam in cams:
        (root / cam).mkdir(parents=True)
        frames[cam] = [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(n)]
        for i, rgb in enumerate(frames[cam]):
            cv2.imwrite(str(root / cam / f'{i:04d}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return frames


def test_folder_cameras_one_per_subfolder_and_bad_inputs(tmp_path) -> None:
    _folder(tmp_path / 'imgs', ('front', 'rear left'), 2)
    cams = folder_cameras(tmp_path / 'imgs')
    assert list(cams) == ['/front/image_raw', '/rear_left/image_raw'] and all(len(v) == 2 for v in cams.values())
    assert list(folder_cameras(tmp_path / 'imgs' / 'front', '/cam/image')) == ['/cam/image']
    with pytest.raises(ConfigError, match='--topic names one camera'):
        folder_cameras(tmp_path / 'imgs', '/x/image_raw')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError, match='no .png/.jpg images'):
        folder_cameras(tmp_path / 'empty')
    with pytest.raises(ConfigError, match='--rate'):
        PlayOptions(rate_hz=0).check()


def test_play_folder_sends_every_frame_after_the_subscriber_matched(tmp_path) -> None:
    frames = _folder(tmp_path / 'imgs', ('front', 'rear'), 3)
    listener = Listener({'/front/image_raw': Image, '/rear/image_raw': Image})
    try:
        t0 = time.time_ns()
        stats = play(tmp_path / 'imgs', PlayOptions(rate_hz=20.0, wait_s=30.0), say=lambda s: None)
        deadline = time.monotonic() + 30
        while sum(len(v) for v in listener.got.values()) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        listener.close()
    assert stats.frames == {'/front/image_raw': 3, '/rear/image_raw': 3}
    for cam in ('front', 'rear'):
        msgs = listener.got[f'/{cam}/image_raw']
        assert len(msgs) == 3      # the first frame was not sent before the subscriber matched
        for msg, rgb in zip(msgs, frames[cam], strict=True):
            assert msg.encoding == 'rgb8' and (msg.height, msg.width) == (H, W)
            assert np.array_equal(np.frombuffer(bytes(msg.data), np.uint8).reshape(H, W, 3), rgb)
            assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec >= t0 - 10**9   # stamped when sent


def test_play_bag_forwards_the_recorded_bytes_with_clock(tmp_path) -> None:
    from rosgraph_msgs.msg import Clock
    rng = np.random.default_rng(1)
    st0 = 1_700_000_000_000_000_000
    frames = [{'topic': '/cam/image_raw', 'stamp': st0 + i * 50_000_000, 'log': st0 + i * 50_000_000,
               'rgb': rng.integers(0, 255, (H, W, 3), dtype=np.uint8)} for i in range(4)]
    bag = write_bag(tmp_path / 'bag', frames)
    listener = Listener({'/cam/image_raw': Image, '/clock': Clock})
    try:
        stats = play(bag, PlayOptions(clock=True, wait_s=30.0), say=lambda s: None)
        deadline = time.monotonic() + 30
        while len(listener.got['/cam/image_raw']) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        listener.close()
    assert stats.frames == {'/cam/image_raw': 4} and stats.loops == 1
    got = listener.got['/cam/image_raw']
    assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in got] == [f['stamp'] for f in frames]
    assert np.array_equal(np.frombuffer(bytes(got[2].data), np.uint8).reshape(H, W, 3), frames[2]['rgb'])
    clocks = [c.clock.sec * 10**9 + c.clock.nanosec for c in listener.got['/clock']]
    assert clocks and set(clocks) <= {f['log'] for f in frames}


def test_watch_counts_masks_saves_overlays_then_unsubscribes(tmp_path) -> None:
    """A stand-in for the node's outputs: masks, an overlay, a colour mask and /diagnostics at 20 Hz."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    from evit_ros.ros.conversions import numpy_to_image
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node('fake_segmentation', context=ctx)
    pubs = {k: node.create_publisher(Image, f'/segmentation/front/{k}', QoSProfile(depth=5))
            for k in ('mask', 'overlay', 'color_mask')}
    diag = node.create_publisher(DiagnosticArray, '/diagnostics', QoSProfile(depth=5))
    stop = threading.Event()
    seen_overlay_subscriber = []

    def publish() -> None:
        ovl = np.full((H, W, 3), (10, 200, 30), np.uint8)
        while not stop.is_set():
            now = node.get_clock().now().to_msg()
            for k, p in pubs.items():
                msg = numpy_to_image(ovl if k != 'mask' else np.zeros((H, W), np.uint8), 'rgb8' if k != 'mask'
                                     else 'mono8')
                msg.header.stamp = now
                p.publish(msg)
            seen_overlay_subscriber.append(pubs['overlay'].get_subscription_count())
            st = DiagnosticStatus(name='evit_segmentation: camera front', message='ok')
            st.values = [KeyValue(key='input_rate_hz', value='20.00')]
            diag.publish(DiagnosticArray(status=[st]))
            time.sleep(0.05)
    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    lines: list[str] = []
    try:
        result = watch(WatchOptions(duration_s=4.0, interval_s=1.0, save_dir=str(tmp_path / 'saved'), save_count=2),
                       say=lines.append)
    finally:
        stop.set()
        thread.join()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    assert result.messages.get('/segmentation/front/mask', 0) > 5
    assert '/segmentation/front/color_mask' not in result.messages   # not subscribed: the node would compute it
    assert sorted(Path(p).name for p in result.saved) == ['front_overlay_00.png', 'front_overlay_01.png']
    assert np.array_equal(cv2.imread(result.saved[0])[0, 0], [30, 200, 10])   # BGR on disk
    assert max(seen_overlay_subscriber) == 1 and seen_overlay_subscriber[-1] == 0   # unsubscribed after saving
    text = '\n'.join(lines)
    assert '/segmentation/front/mask:' in text and 'Hz' in text and 'p50' in text
    assert 'OK    evit_segmentation: camera front: ok [in Hz 20.00]' in text
    assert result.diagnostics == {'evit_segmentation: camera front': ('OK', 'ok')}


def test_cli_play_and_watch_fail_with_one_line(tmp_path, capsys) -> None:
    assert main(['play', str(tmp_path / 'missing')]) == 1
    assert 'does not exist' in capsys.readouterr().err
    assert main(['watch', '--prefix', 'segmentation']) == 1
    assert '--prefix' in capsys.readouterr().err
