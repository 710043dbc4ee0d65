"""``evit-ros play``: publish a bag or a folder of images as camera topics, without ``ros2`` installed.

The development venv has rclpy but no ``ros2`` command line (no ``ros2 bag play``), so this is how a newcomer
feeds the node from the venv alone. A bag's image and CameraInfo messages are forwarded as their recorded CDR
bytes at the recorded pace (``speed`` x), ``/clock`` optionally from the bag's log time (for a node with
``use_sim_time``). A folder of PNG/JPEG files plays as one camera (or one camera per sub-folder of images),
rgb8 ``Image`` messages stamped with the time they are sent, at ``rate_hz``.

Before the first frame it waits (up to ``wait_s``) for a subscriber on every image topic, so the first frames
are not sent to nobody.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.errors import ConfigError, DataError

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'


@dataclass
class PlayStats:
    """What was sent: frames per topic, loops done, wall time."""

    frames: dict[str, int] = field(default_factory=dict)
    loops: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def total(self) -> int:
        return sum(self.frames.values())


@dataclass(frozen=True)
class PlayOptions:
    rate_hz: float = 10.0        # folders: frames per second per camera
    speed: float = 1.0           # bags: factor on the recorded pace
    loop: bool = False
    clock: bool = False          # publish /clock (bags: log time; folders: the send time)
    topic: str = ''              # folders: the image topic of a single camera (default /<folder name>/image_raw)
    best_effort: bool = False    # publisher reliability (default reliable, like most camera drivers)
    wait_s: float = 10.0         # how long to wait for subscribers before the first frame (0: do not wait)
    max_frames: int = 0          # stop after this many image frames (0: all)
    duration_s: float = 0.0      # stop after this many seconds (0: no limit)

    def check(self) -> None:
        if not (0.1 <= self.rate_hz <= 1000.0):
            raise ConfigError(f'--rate {self.rate_hz} is out of range; use frames per second in [0.1, 1000]')
        if not (0.01 <= self.speed <= 100.0):
            raise ConfigError(f'--speed {self.speed} is out of range; use a factor in [0.01, 100] (1.0 = recorded)')
        if self.wait_s < 0 or self.max_frames < 0 or self.duration_s < 0:
            raise ConfigError('--wait, --max-frames and --duration must be >= 0')
        if self.topic and not self.topic.startswith('/'):
            raise ConfigError(f'--topic {self.topic!r} must be an absolute topic name such as /front/image_raw')


def folder_cameras(folder: Path, topic: str = '') -> dict[str, list[Path]]:
    """Image topic -> sorted image files: the folder itself, or each sub-folder holding images as one camera."""
    def images(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    own = images(folder)
    if own:
        return {topic or f'/{_topic_part(folder.name)}/image_raw': own}
    subs = {d: images(d) for d in sorted(folder.iterdir()) if d.is_dir()}
    cams = {f'/{_topic_part(d.name)}/image_raw': files for d, files in subs.items() if files}
    if topic and len(cams) > 1:
        raise ConfigError(f'--topic names one camera, but {folder} has {len(cams)} camera folders; drop --topic')
    if topic and cams:
        return {topic: next(iter(cams.values()))}
    if not cams:
        raise DataError(f'{folder} holds no .png/.jpg images (nor sub-folders of them); give a folder of camera '
                        'frames or a bag')
    return cams


def _topic_part(name: str) -> str:
    part = ''.join(c if c.isalnum() or c == '_' else '_' for c in name).strip('_') or 'camera'
    return part if not part[0].isdigit() else f'cam_{part}'


def is_bag(path: Path) -> bool:
    return path.suffix == '.mcap' or (path.is_dir() and (path / 'metadata.yaml').is_file())


def play(source: str | Path, options: PlayOptions, *, say: Callable[[str], None] = print,
         stop: threading.Event | None = None) -> PlayStats:
    """Publish ``source`` (a bag, or a folder of images) until it ends (or, with ``loop``, until ``stop`` is set,
    the duration or frame limit is reached, or Ctrl-C)."""
    import rclpy

    options.check()
    path = Path(source)
    if not path.exists():
        raise ConfigError(f'{path} does not exist; give a bag (a .mcap file or a rosbag2 folder) or a folder of '
                          'images')
    stop = stop or threading.Event()
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('evit_play', context=context)
    stats = PlayStats()
    t0 = time.monotonic()
    try:
        if is_bag(path):
            _play_bag(node, path, options, stats, stop, say)
        else:
            _play_folder(node, path, options, stats, stop, say)
    except KeyboardInterrupt:
        stats.interrupted = True
    finally:
        stats.seconds = time.monotonic() - t0
        node.destroy_node()
        rclpy.shutdown(context=context)
    return stats


def _qos(options: PlayOptions) -> Any:
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    rel = ReliabilityPolicy.BEST_EFFORT if options.best_effort else ReliabilityPolicy.RELIABLE
    return QoSProfile(depth=10, reliability=rel)


SETTLE_S = 1.0   # after the first subscriber: how long the set of subscribed topics must stay the same


def _wait_for_subscribers(pubs: dict[str, Any], options: PlayOptions, stop: threading.Event,
                          say: Callable[[str], None]) -> None:
    """Wait for the first subscriber on any image topic, then until no further topic gains one for SETTLE_S:
    a node subscribes to all its cameras at once, and a bag's other image topics (labels) may have none."""
    if options.wait_s <= 0:
        return
    deadline = time.monotonic() + options.wait_s
    say(f'waiting up to {options.wait_s:.0f} s for a subscriber on {", ".join(pubs)}')
    seen: set[str] = set()
    changed = 0.0
    while time.monotonic() < deadline and not stop.is_set():
        now = {t for t, p in pubs.items() if p.get_subscription_count() > 0}
        if now != seen:
            seen, changed = now, time.monotonic()
        if seen == set(pubs) or (seen and time.monotonic() - changed >= SETTLE_S):
            break
        time.sleep(0.05)
    if not seen:
        say(f'no subscriber after {options.wait_s:.0f} s; playing anyway')
    elif seen != set(pubs):
        say(f'subscribed: {", ".join(sorted(seen))}; not subscribed: {", ".join(sorted(set(pubs) - seen))}')


def _limits_reached(stats: PlayStats, options: PlayOptions, t0: float, stop: threading.Event) -> bool:
    return (stop.is_set() or (options.max_frames > 0 and stats.total >= options.max_frames)
            or (options.duration_s > 0 and time.monotonic() - t0 >= options.duration_s))


def _sleep_until(due: float, stop: threading.Event) -> None:
    wait = due - time.monotonic()
    if wait > 0:
        stop.wait(wait)


def _clock_msg(ns: int) -> Any:
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock
    sec, nsec = divmod(int(ns), 1_000_000_000)
    return Clock(clock=Time(sec=sec, nanosec=nsec))


def _play_bag(node: Any, path: Path, options: PlayOptions, stats: PlayStats, stop: threading.Event,
              say: Callable[[str], None]) -> None:
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    from evit_ros.eval.bags import COMPRESSED, IMAGE_TYPES, open_reader, read_messages
    types = {COMPRESSED: CompressedImage, CAMERA_INFO: CameraInfo}
    with open_reader(path) as reader:
        found = {c.topic: c.msgtype for c in reader.connections
                 if c.msgtype in IMAGE_TYPES or c.msgtype == CAMERA_INFO}
        if not any(t in IMAGE_TYPES for t in found.values()):
            have = ', '.join(sorted(f'{c.topic} ({c.msgtype})' for c in reader.connections)) or 'none'
            raise DataError(f'{path} has no sensor_msgs Image or CompressedImage topic; its topics: {have}')
    pubs = {t: node.create_publisher(types.get(mt, Image), t, _qos(options)) for t, mt in found.items()}
    image_topics = sorted(t for t, mt in found.items() if mt in IMAGE_TYPES)
    clock = node.create_publisher(Clock, '/clock', 10) if options.clock else None
    _wait_for_subscribers({t: pubs[t] for t in image_topics}, options, stop, say)
    say(f'playing {path}: {", ".join(image_topics)} at {options.speed:g}x the recorded pace'
        + (', /clock from the log time' if clock else ''))
    t0 = time.monotonic()
    while True:
        with open_reader(path) as reader:
            conns = [c for c in reader.connections if c.topic in pubs]
            start_wall, first_log = time.monotonic(), None
            for conn, log_ns, raw in read_messages(reader, conns, str(path)):
                if _limits_reached(stats, options, t0, stop):
                    return
                first_log = log_ns if first_log is None else first_log
                _sleep_until(start_wall + (log_ns - first_log) / 1e9 / options.speed, stop)
                if clock is not None:
                    clock.publish(_clock_msg(log_ns))
                pubs[conn.topic].publish(bytes(raw))
                if conn.topic in image_topics:
                    stats.frames[conn.topic] = stats.frames.get(conn.topic, 0) + 1
        stats.loops += 1
        if not options.loop or _limits_reached(stats, options, t0, stop):
            return


def _frames(files: list[Path]) -> Iterator[np.ndarray]:
    import cv2
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError(f'{f} is not a readable image; remove it or convert it to PNG/JPEG')
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _play_folder(node: Any, path: Path, options: PlayOptions, stats: PlayStats, stop: threading.Event,
                 say: Callable[[str], None]) -> None:
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    from evit_ros.ros.conversions import numpy_to_image
    cams = folder_cameras(path, options.topic)
    pubs = {t: node.create_publisher(Image, t, _qos(options)) for t in cams}
    clock = node.create_publisher(Clock, '/clock', 10) if options.clock else None
    _wait_for_subscribers(pubs, options, stop, say)
    say(f'playing {path}: ' + ', '.join(f'{t} ({len(f)} images)' for t, f in cams.items())
        + f' at {options.rate_hz:g} Hz' + (', with /clock' if clock else ''))
    period = 1.0 / options.rate_hz
    t0 = time.monotonic()
    k = 0
    while True:
        streams = {t: _frames(files) for t, files in cams.items()}
        while streams:
            _sleep_until(t0 + k * period, stop)
            if _limits_reached(stats, options, t0, stop):
                return
            now_ns = node.get_clock().now().nanoseconds
            if clock is not None:
                clock.publish(_clock_msg(now_ns))
            for topic in list(streams):
                rgb = next(streams[topic], None)
                if rgb is None:
                    del streams[topic]
                    continue
                msg = numpy_to_image(rgb, 'rgb8')
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
                msg.header.frame_id = topic.strip('/').split('/')[0] + '_camera_optical'
                pubs[topic].publish(msg)
                stats.frames[topic] = stats.frames.get(topic, 0) + 1
            k += 1
        stats.loops += 1
        if not options.loop:
            return


__all__ = ['IMAGE_SUFFIXES', 'PlayOptions', 'PlayStats', 'folder_cameras', 'is_bag', 'play']
