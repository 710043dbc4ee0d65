"""ROS 2 bag reading and writing with ``rosbags`` (sqlite3 ``.db3`` and MCAP; no ROS installation needed).

Messages are streamed one at a time; decompression, file types and temporary copies are capped by
:mod:`evit_ros.eval.bag_reader` (memory and temp disk bounded whatever the bag claims). Every message is
turned into an event; a message that cannot be deserialized or decoded becomes an event carrying the error
``reason`` instead of a frame, so the evaluator counts it and moves on.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.errors import DataError, FrameError
from evit_ros.eval.bag_reader import ReadLimits, short_error

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
IMAGE_TYPES = (IMAGE, COMPRESSED)


def typestore() -> Any:
    """The ROS 2 Jazzy typestore (sensor_msgs Image/CompressedImage are identical in Humble)."""
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_JAZZY)


def stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def camera_name(topic: str) -> str:
    """``/front/image_raw`` -> ``front`` (first topic component; ``image`` for a bare ``/image_raw``)."""
    parts = [p for p in topic.split('/') if p]
    name = parts[0] if len(parts) > 1 else 'image'
    return ''.join(c if c.isalnum() or c == '_' else '_' for c in name)


@dataclass
class BagEvent:
    """One message of a wanted topic: a decoded image/label, or ``error`` (a FrameError reason) and ``detail``."""

    topic: str
    msgtype: str
    stamp_ns: int
    data: np.ndarray | None = None
    error: str = ''
    detail: str = ''
    frame_id: str = ''
    log_ns: int = 0
    decode_ms: float = 0.0
    label: np.ndarray | None = None   # ground truth travelling with the image (Cityscapes source)


def _decode_image_msg(msg: Any, msgtype: str) -> np.ndarray:
    """RGB uint8 frame from an Image/CompressedImage with the node's own decoder (same errors, same reasons)."""
    from evit_ros.pipeline.decode import decode_compressed, decode_image
    data = np.asarray(msg.data, dtype=np.uint8)
    if msgtype == COMPRESSED:
        return decode_compressed(data, msg.format)
    return decode_image(data, msg.encoding, int(msg.height), int(msg.width), int(msg.step),
                        is_bigendian=bool(msg.is_bigendian))


def decode_label_msg(msg: Any) -> np.ndarray:
    """(H, W) uint8 label image from a mono8 (or 8UC1) Image, or a PNG CompressedImage (``.../mask/compressed``)."""
    if hasattr(msg, 'format'):   # CompressedImage: PNG is lossless, the ids come back exactly
        from evit_ros.pipeline.decode import decode_compressed_mask
        return decode_compressed_mask(np.asarray(msg.data, dtype=np.uint8), str(msg.format))
    if msg.encoding not in ('mono8', '8UC1'):
        raise FrameError(f'label encoding {msg.encoding!r} is not supported; publish labels as mono8', 'label_encoding')
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8)
    if h <= 0 or w <= 0 or step < w or data.size < step * h:
        raise FrameError(f'label {h}x{w} (HxW) step {step} with {data.size} bytes is truncated or inconsistent',
                         'label_size')
    return data[:step * h].reshape(h, step)[:, :w]


@contextlib.contextmanager
def open_reader(path: str | Path, limits: ReadLimits | None = None) -> Iterator[Any]:
    """An open Reader with the caps of :mod:`evit_ros.eval.bag_reader` (bounded decompression, regular files
    only); an empty, random, truncated or hostile bag is one DataError naming the file, not a traceback."""
    from evit_ros.eval.bag_reader import open_bag
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise DataError(f'bag {p} does not exist; pass a ROS 2 bag directory (with metadata.yaml) or a .mcap/.db3 file')
    try:
        reader = open_bag(p, limits or ReadLimits())
    except DataError:
        raise
    except Exception as exc:  # rosbags raises several unrelated types for unreadable bags
        raise DataError(f'bag {p} cannot be opened ({short_error(exc)}); it is empty, truncated or not a ROS 2 bag') \
            from exc
    try:
        yield reader
    finally:
        with contextlib.suppress(Exception):
            reader.close()


def read_messages(reader: Any, connections: Sequence[Any], path: str | Path, start_ns: int | None = None,
                  stop_ns: int | None = None) -> Iterator[tuple[Any, int, bytes]]:
    """``reader.messages`` (log times in ``[start_ns, stop_ns)``) with a truncated or corrupt bag turned into a
    DataError naming the file."""
    it = reader.messages(connections=connections, start=start_ns, stop=stop_ns)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except DataError:   # the caps of bag_reader (a bomb, a size lie) word their own refusal
            raise
        except Exception as exc:  # rosbags' MCAP/sqlite readers raise assorted types on truncated data
            raise DataError(f'bag {path} is truncated or corrupt ({short_error(exc)})') from exc
        yield item


def iter_events(path: str | Path, image_topics: Sequence[str], label_topics: Sequence[str] = (), *,
                start_ns: int | None = None, stop_ns: int | None = None,
                labels_only: bool = False, limits: ReadLimits | None = None) -> Iterator[BagEvent]:
    """Yield decoded image and label events of the wanted topics in log order; bad messages as error events.

    ``start_ns``/``stop_ns`` restrict to log times in ``[start_ns, stop_ns)`` (a time slice of the bag);
    ``labels_only`` reads the label topics alone (the pairing margins of a slice); ``limits`` caps
    decompression (memory) and a file-compressed bag's temporary copy (disk).
    """
    ts = typestore()
    wanted = set(image_topics) | set(label_topics)
    if labels_only:
        wanted = set(label_topics) - set(image_topics)
    with open_reader(path, limits) as reader:
        conns = [c for c in reader.connections if c.topic in wanted]
        found = {c.topic for c in reader.connections}
        have = ', '.join(sorted(found)) or 'none'
        missing = [t for t in image_topics if t not in found]
        if missing:
            raise DataError(f'bag {path} has no topic {missing[0]!r}; its topics are: {have}')
        if label_topics and not any(t in found for t in label_topics):   # nothing could be scored in this bag
            raise DataError(f'bag {path} has no label topic {", ".join(label_topics)}; its topics are: {have}')
        for c in conns:
            if c.msgtype not in IMAGE_TYPES:
                raise DataError(f'topic {c.topic} in {path} has type {c.msgtype}; use a sensor_msgs/Image or '
                                'CompressedImage topic')
        if not conns:
            return
        for conn, log_ns, raw in read_messages(reader, conns, path, start_ns, stop_ns):
            is_label = conn.topic in label_topics and conn.topic not in image_topics
            try:
                msg = ts.deserialize_cdr(raw, conn.msgtype)
            except Exception as exc:  # truncated CDR raises assorted errors inside rosbags
                yield BagEvent(conn.topic, conn.msgtype, int(log_ns), error='deserialize', detail=str(exc)[:200])
                continue
            st = stamp_ns(msg)
            frame_id = str(msg.header.frame_id)
            t0 = time.perf_counter()
            try:
                data = decode_label_msg(msg) if is_label else _decode_image_msg(msg, conn.msgtype)
            except FrameError as exc:
                yield BagEvent(conn.topic, conn.msgtype, st, error=exc.reason, detail=str(exc)[:200],
                               frame_id=frame_id, log_ns=int(log_ns))
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. cv2.error on a JPEG header claiming 65500x65500
                yield BagEvent(conn.topic, conn.msgtype, st, error='corrupt', detail=short_error(exc),
                               frame_id=frame_id, log_ns=int(log_ns))
                continue
            yield BagEvent(conn.topic, conn.msgtype, st, data=data, frame_id=frame_id, log_ns=int(log_ns),
                           decode_ms=(time.perf_counter() - t0) * 1000.0)


# -- writing -----------------------------------------------------------------------------------------------

class MessageFactory:
    """Builds Image/CompressedImage messages with the typestore (for --out-bag, tests and the live player)."""

    def __init__(self, ts: Any | None = None) -> None:
        self.ts = ts or typestore()
        t = self.ts.types
        self._Image = t[IMAGE]
        self._Compressed = t[COMPRESSED]
        self._Header = t['std_msgs/msg/Header']
        self._Time = t['builtin_interfaces/msg/Time']

    def header(self, stamp: int, frame_id: str = '') -> Any:
        return self._Header(stamp=self._Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000),
                            frame_id=frame_id)

    def image(self, array: np.ndarray, stamp: int, encoding: str = '', frame_id: str = '') -> Any:
        a = np.ascontiguousarray(array, dtype=np.uint8)
        ch = 1 if a.ndim == 2 else a.shape[2]
        enc = encoding or {1: 'mono8', 3: 'rgb8', 4: 'rgba8'}[ch]
        return self._Image(header=self.header(stamp, frame_id), height=a.shape[0], width=a.shape[1], encoding=enc,
                           is_bigendian=0, step=a.shape[1] * ch, data=a.reshape(-1))

    def compressed(self, rgb: np.ndarray, stamp: int, fmt: str = 'jpeg', quality: int = 95, frame_id: str = '') -> Any:
        import cv2
        ext = '.png' if fmt == 'png' else '.jpg'
        params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == '.jpg' else []
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]), params)
        if not ok:
            raise DataError(f'could not encode a {rgb.shape} image as {fmt}')
        return self._Compressed(header=self.header(stamp, frame_id), format=fmt, data=buf.reshape(-1))

    def serialize(self, msg: Any, msgtype: str) -> bytes:
        return bytes(self.ts.serialize_cdr(msg, msgtype))


class BagWriter:
    """A rosbags Writer (MCAP by default) with one connection per topic, created on first use.

    Nothing half-written is ever left at ``path``: the bag is written under a temporary name next to it and
    moved into place by ``close()``; ``abort()`` (or leaving the ``with`` block by an exception) removes it.
    A ``path`` ending in ``.mcap`` becomes that single MCAP file; any other name a rosbag2 directory.
    """

    def __init__(self, path: str | Path, storage: str = 'mcap') -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        self.path = Path(path)
        check_new_bag_path(self.path)
        self.single_file = self.path.suffix == '.mcap' and storage == 'mcap'
        self.tmp = self.path.parent / f'.{self.path.name}.partial-{os.getpid()}'
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        self.factory = MessageFactory()
        self._writer: Any = Writer(self.tmp, version=9, storage_plugin=plugin)
        self._writer.open()
        self._conns: dict[str, Any] = {}

    def write(self, topic: str, msgtype: str, msg: Any, log_ns: int) -> None:
        self.write_raw(topic, msgtype, self.factory.serialize(msg, msgtype), log_ns)

    def write_raw(self, topic: str, msgtype: str, raw: bytes, log_ns: int) -> None:
        """Write already-serialized bytes (tests use this to store deliberately corrupt messages)."""
        conn = self._conns.get(topic)
        if conn is None:
            conn = self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=self.factory.ts)
        self._writer.write(conn, int(log_ns), raw)

    def close(self) -> None:
        """Finish the bag and move it to its final path."""
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        if self.single_file:
            files = sorted(self.tmp.glob('*.mcap'))
            if len(files) != 1:
                raise DataError(f'expected one MCAP file in {self.tmp}, found {len(files)}')
            os.replace(files[0], self.path)
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the unfinished bag: nothing is left at the final path or under the temporary name."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def check_new_bag_path(path: Path) -> None:
    """Refuse an output bag path before any work is done: it must not exist and its folder must be writable."""
    if path.exists():
        raise DataError(f'output bag {path} already exists; remove it or choose another path')
    parent = path.parent if str(path.parent) else Path('.')
    if not parent.is_dir():
        raise DataError(f'output bag {path}: folder {parent} does not exist; create it first')
    if not os.access(parent, os.W_OK):
        raise DataError(f'output bag {path}: folder {parent} is not writable')
