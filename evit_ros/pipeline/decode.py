"""Raw ``sensor_msgs/Image`` and ``CompressedImage`` buffers -> RGB uint8 ``[H, W, 3]``.

Every conversion is one OpenCV call (or a zero-copy numpy view) on the message buffer, so decoding costs
about as much as a memory copy. Bad buffers raise :class:`~evit_ros.errors.FrameError` whose ``reason``
is one of :data:`FRAME_ERROR_REASONS`, for per-cause counters.

``mono16`` is scaled to 8 bit by keeping the high byte (``value >> 8``), the same as a linear 0..65535 ->
0..255 map with truncation. Bayer patterns use OpenCV's bilinear demosaicing (as cv_bridge does).
"""
from __future__ import annotations

import struct

import cv2
import numpy as np

from evit_ros.config import DEFAULT_MAX_DECODED_PIXELS
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
                 step: int, is_bigendian: bool = False,
                 max_pixels: int = DEFAULT_MAX_DECODED_PIXELS) -> np.ndarray:
    """Decode one raw image buffer to RGB uint8 ``[height, width, 3]``.

    ``rgb8`` with rows packed (``step == width * 3``) or padded returns a read-only view of ``data`` (no copy);
    every other encoding returns a new array. Raises FrameError (reason 'encoding', 'size', 'step' or
    'truncated') when the buffer does not match its header, and 'size' above ``max_pixels`` (width*height).
    The buffer must hold exactly ``step * rows`` bytes: a step larger than the data implies is refused
    ('step'), never padded, so a hostile header cannot make the node allocate.
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
    if height * width > max_pixels:
        raise FrameError(f'{encoding} image {width}x{height} has {height * width} pixels, more than '
                         f'input.max_decoded_pixels={max_pixels}; raise that parameter if the camera is really '
                         'this large', 'size')
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
    if step > row_bytes and buf.size < step * rows and buf.size >= row_bytes * rows:
        implied = buf.size // rows
        raise FrameError(f'{encoding} {width}x{height} step {step} is larger than the data implies '
                         f'({buf.size} bytes for {rows} rows: step {implied}); fix the driver\'s step field',
                         'step')
    if buf.size < step * rows:
        raise FrameError(f'{encoding} {width}x{height} step {step} needs {step * rows} bytes '
                         f'(step*{rows}), got {buf.size}', 'truncated')
    if buf.size > step * rows:
        raise FrameError(f'{encoding} {width}x{height} step {step} expects {step * rows} bytes, got {buf.size} '
                         '(height, step or data length is wrong)', 'size')
    plane = buf.reshape(rows, step)[:, :row_bytes]
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


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}   # start-of-frame: baseline .. lossless


def _jpeg_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment of a JPEG, None if there is none.

    Walks the segment headers (each step skips a whole segment, so the walk reads a few bytes per segment
    however large the APP/COM segments before the frame header are: EXIF thumbnails and ICC profiles easily
    exceed 64 KB); stops at the start of scan.
    """
    data = memoryview(np.ascontiguousarray(buf).reshape(-1))
    n = len(data)
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:          # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):   # markers without a length
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            height, width = struct.unpack('>HH', data[i + 5:i + 9])
            return width, height
        if marker == 0xDA or length < 2:   # start of scan without a frame header, or a broken length
            return None
        i += 2 + length
    return None


def compressed_size(buf: np.ndarray) -> tuple[str, int, int]:
    """(format, width, height) read from a JPEG or PNG header without decoding; FrameError for anything else."""
    b = bytes(buf[:32])
    if b[:8] == b'\x89PNG\r\n\x1a\n':
        if len(b) < 24 or b[12:16] != b'IHDR':
            raise FrameError(f'PNG of {buf.size} bytes has no IHDR header; the image is corrupt', 'corrupt')
        width, height = struct.unpack('>II', b[16:24])
        return 'png', width, height
    if b[:2] == b'\xff\xd8':
        size = _jpeg_size(buf)
        if size is None:
            raise FrameError(f'JPEG of {buf.size} bytes has no readable frame header (SOF); the image is corrupt',
                             'corrupt')
        return 'jpeg', size[0], size[1]
    raise FrameError(f'compressed image of {buf.size} bytes starting {b[:4].hex()} is neither JPEG nor PNG (the '
                     'formats of image_transport\'s compressed plugin); corrupt or unsupported', 'corrupt')


def decode_compressed_mask(data: bytes | bytearray | memoryview | np.ndarray, format: str = '',  # noqa: A002
                           max_pixels: int = DEFAULT_MAX_DECODED_PIXELS) -> np.ndarray:
    """A PNG ``CompressedImage`` of a mono8 mask (``segmentation/<cam>/mask/compressed``) -> ``[H, W]`` uint8 ids.

    PNG is lossless, so the class ids come back exactly; a JPEG mask (lossy: ids blur at every edge) is refused
    as FrameError 'label_encoding', and so is a PNG that is not 8-bit gray. The header size is checked before
    decoding, as for camera frames.
    """
    buf = _as_bytes_array(data)
    if buf.size == 0:
        raise FrameError('compressed mask is empty; expected PNG bytes', 'truncated')
    kind, width, height = compressed_size(buf)
    if kind != 'png':
        raise FrameError(f'compressed mask is {kind} ({format or "no format"}): lossy, the class ids are not '
                         'exact; record segmentation/<cam>/mask/compressed (PNG) or the raw mask', 'label_encoding')
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise FrameError(f'PNG mask header claims {width}x{height} pixels (limit {max_pixels}); not decoded', 'size')
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise FrameError(f'PNG mask of {buf.size} bytes could not be decoded: '
                         f'{str(exc).strip().splitlines()[-1]}', 'corrupt') from exc
    if img is None:
        raise FrameError(f'PNG mask of {buf.size} bytes could not be decoded', 'corrupt')
    if img.dtype != np.uint8 or img.ndim != 2:
        raise FrameError(f'PNG mask is {img.dtype} with {1 if img.ndim == 2 else img.shape[2]} channels; a mask '
                         'is 8-bit gray (mono8) class ids', 'label_encoding')
    return img


def decode_compressed(data: bytes | bytearray | memoryview | np.ndarray, format: str = '',  # noqa: A002
                      max_pixels: int = DEFAULT_MAX_DECODED_PIXELS) -> np.ndarray:
    """Decode a ``CompressedImage`` (JPEG or PNG; ``format`` is informational) to RGB uint8 ``[H, W, 3]``.

    The size in the header is checked before anything is decoded: more than ``max_pixels`` pixels (a
    decompression bomb, or a camera larger than configured) is FrameError 'size'. Raises 'truncated' for
    an empty buffer or a JPEG without its end marker, 'corrupt' for neither JPEG nor PNG or when the
    header or the data cannot be decoded.
    """
    buf = _as_bytes_array(data)
    if buf.size == 0:
        raise FrameError(f'compressed image ({format or "unknown format"}) is empty; expected JPEG or PNG bytes',
                         'truncated')
    kind, width, height = compressed_size(buf)
    if width <= 0 or height <= 0:
        raise FrameError(f'{kind} header claims {width}x{height} pixels; the image is corrupt', 'corrupt')
    if width * height > max_pixels:
        raise FrameError(f'{kind} header claims {width}x{height} = {width * height} pixels, more than '
                         f'input.max_decoded_pixels={max_pixels} (a decompression bomb, or raise that parameter '
                         'for a camera this large); not decoded', 'size')
    if kind == 'jpeg' and not (buf.size >= 4 and buf[-2] == 0xFF and buf[-1] == 0xD9):
        # OpenCV silently decodes truncated JPEGs with grey bottom rows; refuse them instead.
        tail = bytes(buf[-16:]).rstrip(b'\x00')
        if not tail.endswith(b'\xff\xd9'):
            raise FrameError(f'JPEG of {buf.size} bytes has no end-of-image marker (FFD9): truncated in transport',
                             'truncated')
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:   # e.g. a header OpenCV refuses: corrupt data, not an engine failure
        raise FrameError(f'compressed image ({kind}, {buf.size} bytes) could not be decoded: '
                         f'{str(exc).strip().splitlines()[-1]}', 'corrupt') from exc
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
