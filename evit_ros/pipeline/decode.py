"""Raw ``sensor_msgs/Image`` and ``CompressedImage`` buffers -> RGB uint8 ``[H, W, 3]``.

Every conversion is one OpenCV call (or a zero-copy numpy view) on the message buffer, so decoding costs
about as much as a memory copy. Bad buffers raise :class:`~evit_ros.errors.FrameError` whose ``reason``
is one of :data:`FRAME_ERROR_REASONS`, for per-cause counters.

``mono16`` is scaled to 8 bit by keeping the high byte (``value >> 8``), the same as a linear 0..65535 ->
0..255 map with truncation. Bayer patterns use OpenCV's bilinear demosaicing (as cv_bridge does).
"""
from __future__ import annotations

import cv2
import numpy as np

from evit_ros.errors import FrameError

FRAME_ERROR_REASONS: tuple[str, ...] = ('encoding', 'size', 'step', 'truncated', 'corrupt')

# encoding -> (bytes per pixel of the packed row, OpenCV conversion code to RGB or None for a view/copy)
_BAYER = {
    # ROS names the 2x2 pattern from the top-left pixel; OpenCV names it from the second row/column.
    'bayer_rggb8': cv2.COLOR_BayerBG2RGB,
    'bayer_bggr8': cv2.COLOR_BayerRG2RGB,
    'bayer_gbrg8': cv2.COLOR_BayerGR2RGB,
    'bayer_grbg8': cv2.COLOR_BayerGB2RGB,
}
_BYTES_PER_PIXEL: dict[str, int] = {
    'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1, 'mono16': 2, '8UC1': 1, '8UC3': 3,
    'yuv422': 2, 'uyvy': 2, 'yuv422_yuy2': 2, 'yuyv': 2, 'nv12': 1,
    **{k: 1 for k in _BAYER},
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_BYTES_PER_PIXEL)


def _as_bytes_array(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype != np.uint8 else data.reshape(-1)
    return np.frombuffer(data, dtype=np.uint8)


def decode_image(data: bytes | bytearray | memoryview | np.ndarray, encoding: str, height: int, width: int,
                 step: int, is_bigendian: bool = False) -> np.ndarray:
    """Decode one raw image buffer to RGB uint8 ``[height, width, 3]``.

    ``rgb8`` with rows packed (``step == width * 3``) or padded returns a read-only view of ``data`` (no copy);
    every other encoding returns a new array. Raises FrameError (reason 'encoding', 'size', 'step' or
    'truncated') when the buffer does not match its header.
    """
    bpp = _BYTES_PER_PIXEL.get(encoding)
    if bpp is None:
        raise FrameError(f'unsupported image encoding {encoding!r}; supported: {", ".join(SUPPORTED_ENCODINGS)} '
                         '(or publish compressed JPEG/PNG)', 'encoding')
    if not (isinstance(height, (int, np.integer)) and isinstance(width, (int, np.integer))) or height <= 0 \
            or width <= 0 or height > 65535 or width > 65535:
        raise FrameError(f'{encoding} image size {width}x{height} is invalid; width and height must be in '
                         '[1, 65535]', 'size')
    height, width, step = int(height), int(width), int(step)
    if encoding in ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv', 'nv12') and width % 2:
        raise FrameError(f'{encoding} image width {width} must be even (chroma is shared by pixel pairs)', 'size')
    if encoding == 'nv12' and height % 2:
        raise FrameError(f'nv12 image height {height} must be even (chroma rows cover two luma rows)', 'size')
    row_bytes = width * bpp
    if step < row_bytes:
        raise FrameError(f'{encoding} step {step} is smaller than width*{bpp}={row_bytes}; '
                         f'step must be at least {row_bytes} bytes', 'step')
    rows = height * 3 // 2 if encoding == 'nv12' else height
    buf = _as_bytes_array(data)
    need = step * (rows - 1) + row_bytes
    if buf.size < need:
        raise FrameError(f'{encoding} {width}x{height} step {step} needs at least {need} bytes '
                         f'(step*{rows}={step * rows}), got {buf.size}', 'truncated')
    if buf.size > step * rows:
        raise FrameError(f'{encoding} {width}x{height} step {step} expects {step * rows} bytes, got {buf.size} '
                         '(height, step or data length is wrong)', 'size')
    if buf.size < step * rows:  # only the last row's padding is missing (some drivers): copy once
        buf = np.concatenate([buf, np.zeros(step * rows - buf.size, np.uint8)])
    plane = buf[:step * rows].reshape(rows, step)[:, :row_bytes]
    if encoding in ('rgb8', '8UC3'):
        return plane.reshape(rows, width, 3)
    if encoding == 'bgr8':
        return cv2.cvtColor(plane.reshape(rows, width, 3), cv2.COLOR_BGR2RGB)
    if encoding == 'rgba8':
        return cv2.cvtColor(plane.reshape(rows, width, 4), cv2.COLOR_RGBA2RGB)
    if encoding == 'bgra8':
        return cv2.cvtColor(plane.reshape(rows, width, 4), cv2.COLOR_BGRA2RGB)
    if encoding in ('mono8', '8UC1'):
        return cv2.cvtColor(plane, cv2.COLOR_GRAY2RGB)
    if encoding == 'mono16':
        # high byte of each 16-bit sample: index 0 when big-endian, 1 when little-endian
        high = plane.reshape(rows, width, 2)[:, :, 0 if is_bigendian else 1]
        return cv2.cvtColor(np.ascontiguousarray(high), cv2.COLOR_GRAY2RGB)
    if encoding in ('yuv422', 'uyvy'):
        return cv2.cvtColor(plane.reshape(rows, width, 2), cv2.COLOR_YUV2RGB_UYVY)
    if encoding in ('yuv422_yuy2', 'yuyv'):
        return cv2.cvtColor(plane.reshape(rows, width, 2), cv2.COLOR_YUV2RGB_YUYV)
    if encoding == 'nv12':
        return cv2.cvtColor(plane, cv2.COLOR_YUV2RGB_NV12)
    return cv2.cvtColor(plane, _BAYER[encoding])


def decode_compressed(data: bytes | bytearray | memoryview | np.ndarray, format: str = '') -> np.ndarray:  # noqa: A002
    """Decode a ``CompressedImage`` (JPEG or PNG; ``format`` is informational) to RGB uint8 ``[H, W, 3]``.

    Raises FrameError 'truncated' for an empty buffer or a JPEG without its end marker, 'corrupt' when
    OpenCV cannot decode it.
    """
    buf = _as_bytes_array(data)
    if buf.size == 0:
        raise FrameError(f'compressed image ({format or "unknown format"}) is empty; expected JPEG or PNG bytes',
                         'truncated')
    is_jpeg = buf.size >= 2 and buf[0] == 0xFF and buf[1] == 0xD8
    if is_jpeg and not (buf.size >= 4 and buf[-2] == 0xFF and buf[-1] == 0xD9):
        # OpenCV silently decodes truncated JPEGs with grey bottom rows; refuse them instead.
        tail = bytes(buf[-16:]).rstrip(b'\x00')
        if not tail.endswith(b'\xff\xd9'):
            raise FrameError(f'JPEG of {buf.size} bytes has no end-of-image marker (FFD9): truncated in transport',
                             'truncated')
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise FrameError(f'compressed image ({format or "unknown format"}, {buf.size} bytes) could not be decoded; '
                         'expected a valid JPEG or PNG', 'corrupt')
    if img.dtype == np.uint16:
        img = np.right_shift(img, 8).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
