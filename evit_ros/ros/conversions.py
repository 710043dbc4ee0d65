"""sensor_msgs / nav_msgs / geometry_msgs <-> numpy without cv_bridge.

Decoding goes through :mod:`evit_ros.pipeline.decode` (the same code the evaluator uses), so a frame the
node refuses is refused for the same reason everywhere. Message payloads are filled with one buffer copy
(``array.array.frombytes`` of the numpy memory): assigning ``bytes`` to a ``uint8[]`` field makes rosidl
check every element in Python, which costs tens of milliseconds per camera frame.
"""
from __future__ import annotations

import array
from typing import Any

import cv2
import numpy as np

from evit_ros.config import DEFAULT_MAX_DECODED_PIXELS
from evit_ros.errors import FrameError
from evit_ros.pipeline.decode import decode_compressed, decode_image

_CHANNELS = {'mono8': 1, 'rgb8': 3, 'bgr8': 3, '8UC1': 1, '8UC3': 3}


def _payload(arr: np.ndarray) -> array.array:
    buf = array.array('B')
    buf.frombytes(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
    return buf


def backing_array(arr: np.ndarray) -> array.array | None:
    """The ``array.array('B')`` whose whole memory ``arr`` is (C-contiguous), or None.

    The pipeline's output buffers are allocated that way, so a message can take the buffer itself as its
    payload: no copy before ``publish`` (which serializes synchronously, so reusing the buffer for the next
    frame afterwards is safe).
    """
    if arr.dtype != np.uint8 or not arr.flags.c_contiguous:
        return None
    base: object = arr
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    if isinstance(base, array.array) and base.typecode == 'B' and len(base) == arr.nbytes \
            and base.buffer_info()[0] == arr.__array_interface__['data'][0]:
        return base
    return None


def image_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_DECODED_PIXELS) -> np.ndarray:
    """sensor_msgs/Image -> RGB uint8 ``[H, W, 3]`` (raises FrameError with a reason key on bad frames)."""
    return decode_image(np.frombuffer(msg.data, np.uint8) if len(msg.data) else b'', msg.encoding,
                        int(msg.height), int(msg.width), int(msg.step), bool(msg.is_bigendian), max_pixels)


def compressed_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_DECODED_PIXELS) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG/PNG) -> RGB uint8 ``[H, W, 3]`` (FrameError on bad frames)."""
    return decode_compressed(np.frombuffer(msg.data, np.uint8) if len(msg.data) else b'', str(msg.format),
                             max_pixels)


def to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_DECODED_PIXELS) -> np.ndarray:
    """Either image message type -> RGB uint8; frames above ``max_pixels`` are refused before decoding."""
    if hasattr(msg, 'encoding'):
        return image_to_rgb(msg, max_pixels)
    return compressed_to_rgb(msg, max_pixels)


def numpy_to_image(arr: np.ndarray, encoding: str, header: Any = None, *, share: bool = False) -> Any:
    """uint8 ``[H, W]`` (mono8) or ``[H, W, 3]`` (rgb8/bgr8) -> sensor_msgs/Image with ``header`` copied.

    ``share=True``: when ``arr`` is backed by an ``array.array`` (:func:`backing_array`), the message uses that
    memory as its payload without copying; publish it before ``arr`` is overwritten.
    """
    from sensor_msgs.msg import Image
    ch = _CHANNELS.get(encoding)
    if ch is None:
        raise FrameError(f'cannot build an Image of encoding {encoding!r}; use one of {", ".join(_CHANNELS)}',
                         'encoding')
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.shape[2] if arr.ndim == 3 else 1) != ch:
        raise FrameError(f'array {arr.dtype} {arr.shape} does not fit encoding {encoding} ({ch} uint8 channels)',
                         'size')
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1]) * ch
    shared = backing_array(arr) if share else None
    if shared is not None and hasattr(msg, '_data'):
        # what the generated setter itself does for an array.array('B') when field checks are on; with them
        # off (Jazzy's default) it would copy the buffer with array.array('B', value)
        msg._data = shared
    else:
        msg.data = shared if shared is not None else _payload(arr)
    return msg


def image_to_numpy(msg: Any) -> np.ndarray:
    """mono8 -> ``[H, W]``, rgb8/bgr8 -> ``[H, W, 3]`` (bytes as stored, step-aware); for outputs and tests."""
    ch = _CHANNELS.get(msg.encoding)
    if ch is None:
        raise FrameError(f'image_to_numpy handles {", ".join(_CHANNELS)}, not {msg.encoding!r}', 'encoding')
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    buf = np.frombuffer(msg.data, np.uint8)
    if step < w * ch or buf.size < step * h:
        raise FrameError(f'{msg.encoding} {w}x{h} step {step} with {buf.size} bytes is inconsistent', 'size')
    rows = buf[:step * h].reshape(h, step)[:, :w * ch]
    return rows.reshape(h, w) if ch == 1 else rows.reshape(h, w, ch)


# PNG zlib level and row filter of the compressed mask/confidence outputs. Class-id masks are long runs and
# confidence is smooth: the "up" filter with level 1 measured 3-4x faster than libpng's adaptive filter choice
# at about the same size, and higher levels cost time for a few percent fewer bytes (python -m
# evit_ros.bench.compressed; docs/node.md). OpenCV < 4.10 has no filter option and uses libpng's default.
PNG_LEVEL = 1
_PNG_FILTER = getattr(cv2, 'IMWRITE_PNG_FILTER', None)
_PNG_FILTER_UP = getattr(cv2, 'IMWRITE_PNG_FILTER_UP', None)
PNG_PARAMS: tuple[int, ...] = (_PNG_FILTER, _PNG_FILTER_UP) if _PNG_FILTER is not None and \
    _PNG_FILTER_UP is not None else ()


def compressed_format(encoding: str, fmt: str) -> str:
    """The ``format`` string image_transport's compressed plugin writes for ``encoding`` as ``fmt``.

    ``<encoding>; jpeg compressed bgr8`` / ``<encoding>; png compressed bgr8`` for color images;
    ``mono8; jpeg compressed mono8`` and ``mono8; png compressed `` (its trailing space included) for gray
    ones (compressed_publisher.cpp): RViz's compressed transport and Foxglove read these.
    """
    color = _CHANNELS.get(encoding, 1) == 3
    if fmt == 'jpeg':
        return f'{encoding}; jpeg compressed {"bgr8" if color else "mono8"}'
    return f'{encoding}; png compressed {"bgr8" if color else ""}'


def encode_compressed(arr: np.ndarray, encoding: str, fmt: str, header: Any = None, *, quality: int = 90,
                      png_level: int = PNG_LEVEL, bgr: np.ndarray | None = None) -> Any:
    """mono8 ``[H, W]`` or rgb8 ``[H, W, 3]`` -> sensor_msgs/CompressedImage as image_transport names it.

    PNG is lossless (a class-id mask decodes to the same ids); JPEG takes ``quality`` 1..100. Color goes to
    the codec as BGR (what image_transport sends); ``bgr`` is an optional ``[H, W, 3]`` scratch buffer for
    that conversion, so a camera's stream reuses one buffer instead of a new frame each time.
    """
    from sensor_msgs.msg import CompressedImage
    if fmt not in ('jpeg', 'png'):
        raise FrameError(f'compressed format {fmt!r}: use jpeg or png', 'encoding')
    img = arr
    if arr.ndim == 3:
        if bgr is None or bgr.shape != arr.shape:
            bgr = np.empty_like(arr)
        img = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR, dst=bgr)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == 'jpeg' else [cv2.IMWRITE_PNG_COMPRESSION,
                                                                              int(png_level), *PNG_PARAMS]
    ok, enc = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', img, params)
    if not ok:
        raise FrameError(f'could not encode {arr.shape} {encoding} as {fmt}', 'encoding')
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = compressed_format(encoding, fmt)
    msg.data = _payload(enc.reshape(-1))
    return msg


def numpy_to_compressed(rgb: np.ndarray, header: Any = None, fmt: str = 'jpeg', quality: int = 90) -> Any:
    """RGB uint8 -> sensor_msgs/CompressedImage (jpeg or png), as image_transport's compressed plugin names it."""
    return encode_compressed(rgb, 'rgb8', fmt, header, quality=quality)


def occupancy_grid(cells: np.ndarray, *, resolution: float, origin_xy: tuple[float, float], frame_id: str,
                   stamp: Any) -> Any:
    """int8 ``[rows, cols]`` (0 free, 100 occupied, -1 unknown) -> nav_msgs/OccupancyGrid (row-major, identity
    orientation; ``info.width`` = cols along x, ``info.height`` = rows along y)."""
    from nav_msgs.msg import OccupancyGrid
    msg = OccupancyGrid()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.info.map_load_time = stamp
    msg.info.resolution = float(resolution)
    msg.info.height, msg.info.width = int(cells.shape[0]), int(cells.shape[1])
    msg.info.origin.position.x = float(origin_xy[0])
    msg.info.origin.position.y = float(origin_xy[1])
    msg.info.origin.orientation.w = 1.0
    data = array.array('b')
    data.frombytes(np.ascontiguousarray(cells, dtype=np.int8).reshape(-1).view(np.uint8).data)
    msg.data = data
    return msg


def grid_to_numpy(msg: Any) -> np.ndarray:
    """nav_msgs/OccupancyGrid -> int8 ``[height, width]``."""
    return np.asarray(msg.data, dtype=np.int8).reshape(int(msg.info.height), int(msg.info.width))


def polygon_stamped(points_xy: np.ndarray, *, frame_id: str, stamp: Any) -> Any:
    """``(N, 2)`` ground points -> geometry_msgs/PolygonStamped (z = 0)."""
    from geometry_msgs.msg import Point32, PolygonStamped
    msg = PolygonStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.polygon.points = [Point32(x=float(x), y=float(y), z=0.0) for x, y in np.asarray(points_xy).reshape(-1, 2)]
    return msg


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


UNLABELED_ID = 255          # mono8 masks: the largest id is the "unlabeled" class (vision_msgs convention)
UNLABELED_NAME = 'unlabeled'


def label_info(label_info_type: Any, vision_class_type: Any, class_names: Any, stamp: Any = None,
               frame_id: str = '') -> Any:
    """vision_msgs/LabelInfo for a mono8 class mask: trainId ``i`` -> ``class_names[i]``, 255 -> unlabeled.

    The message types are passed in (``vision_msgs.msg.LabelInfo``/``VisionClass``) because vision_msgs is
    optional; ``threshold`` is 0: the masks are argmax, no confidence threshold is applied.
    """
    names = [str(n) for n in class_names]
    if not 0 < len(names) < UNLABELED_ID:
        raise ValueError(f'{len(names)} classes do not fit a mono8 mask with {UNLABELED_ID} as unlabeled')
    msg = label_info_type()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.class_map = [vision_class_type(class_id=i, class_name=n) for i, n in enumerate(names)] + \
        [vision_class_type(class_id=UNLABELED_ID, class_name=UNLABELED_NAME)]
    msg.threshold = 0.0
    return msg
