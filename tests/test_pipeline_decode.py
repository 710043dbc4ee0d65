"""Decoding of every supported raw encoding against OpenCV reference conversions, plus bad buffers."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from evit_ros.errors import FrameError
from evit_ros.pipeline.decode import FRAME_ERROR_REASONS, SUPPORTED_ENCODINGS, decode_compressed, decode_image

H, W = 24, 32
RNG = np.random.default_rng(1)

# encoding -> (bytes per pixel, rows of the buffer, reference: packed [rows, W*bpp] uint8 -> RGB)
REFERENCE = {
    'rgb8': (3, H, lambda p: p.reshape(H, W, 3).copy()),
    'bgr8': (3, H, lambda p: cv2.cvtColor(p.reshape(H, W, 3), cv2.COLOR_BGR2RGB)),
    'rgba8': (4, H, lambda p: cv2.cvtColor(p.reshape(H, W, 4), cv2.COLOR_RGBA2RGB)),
    'bgra8': (4, H, lambda p: cv2.cvtColor(p.reshape(H, W, 4), cv2.COLOR_BGRA2RGB)),
    'mono8': (1, H, lambda p: cv2.cvtColor(p, cv2.COLOR_GRAY2RGB)),
    'mono16': (2, H, lambda p: cv2.cvtColor((p.view('<u2') >> 8).astype(np.uint8), cv2.COLOR_GRAY2RGB)),
    'yuv422': (2, H, lambda p: cv2.cvtColor(p.reshape(H, W, 2), cv2.COLOR_YUV2RGB_UYVY)),
    'yuv422_yuy2': (2, H, lambda p: cv2.cvtColor(p.reshape(H, W, 2), cv2.COLOR_YUV2RGB_YUYV)),
    'nv12': (1, H * 3 // 2, lambda p: cv2.cvtColor(p, cv2.COLOR_YUV2RGB_NV12)),
    'bayer_rggb8': (1, H, lambda p: cv2.cvtColor(p, cv2.COLOR_BayerBG2RGB)),
    'bayer_bggr8': (1, H, lambda p: cv2.cvtColor(p, cv2.COLOR_BayerRG2RGB)),
    'bayer_gbrg8': (1, H, lambda p: cv2.cvtColor(p, cv2.COLOR_BayerGR2RGB)),
    'bayer_grbg8': (1, H, lambda p: cv2.cvtColor(p, cv2.COLOR_BayerGB2RGB)),
}


def _padded(packed: np.ndarray, pad: int) -> tuple[bytes, int]:
    rows, row_bytes = packed.shape
    buf = np.full((rows, row_bytes + pad), 0xAB, np.uint8)  # padding bytes must never leak into pixels
    buf[:, :row_bytes] = packed
    return buf.tobytes(), row_bytes + pad


@pytest.mark.parametrize('encoding', sorted(REFERENCE))
@pytest.mark.parametrize('pad', [0, 7])
def test_encoding_matches_opencv_reference(encoding: str, pad: int) -> None:
    bpp, rows, ref = REFERENCE[encoding]
    packed = RNG.integers(0, 256, (rows, W * bpp), dtype=np.uint8)
    data, step = _padded(packed, pad)
    out = decode_image(data, encoding, H, W, step)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref(packed))


def test_every_supported_encoding_is_tested() -> None:
    aliases = {'8UC1', '8UC3', 'uyvy', 'yuyv'}
    assert set(SUPPORTED_ENCODINGS) - aliases == set(REFERENCE)


def test_bayer_patterns_recover_a_flat_colour() -> None:
    r, g, b = 200, 100, 50
    patterns = {'bayer_rggb8': [[r, g], [g, b]], 'bayer_bggr8': [[b, g], [g, r]],
                'bayer_gbrg8': [[g, b], [r, g]], 'bayer_grbg8': [[g, r], [b, g]]}
    for enc, p in patterns.items():
        mosaic = np.tile(np.array(p, np.uint8), (4, 4))
        out = decode_image(mosaic.tobytes(), enc, 8, 8, 8)
        np.testing.assert_array_equal(out[2:6, 2:6], np.broadcast_to([r, g, b], (4, 4, 3)), err_msg=enc)


def test_yuv_grey_and_mono16_semantics() -> None:
    uyvy = np.tile(np.array([128, 90], np.uint8), (4, 8))  # U/V = 128 (no chroma), Y = 90
    out = decode_image(uyvy.tobytes(), 'yuv422', 4, 8, 16)
    # neutral chroma gives grey; OpenCV's YUV is BT.601 video range: 1.164 * (Y - 16)
    assert np.all(out == out[..., :1]) and np.all(np.abs(out.astype(int) - round(1.164 * (90 - 16))) <= 1)
    vals = np.array([[0x1234, 0xFF01, 0x00FF, 0x8000]], np.uint16)
    little = decode_image(vals.astype('<u2').tobytes(), 'mono16', 1, 4, 8, is_bigendian=False)
    big = decode_image(vals.astype('>u2').tobytes(), 'mono16', 1, 4, 8, is_bigendian=True)
    np.testing.assert_array_equal(little[0, :, 0], [0x12, 0xFF, 0x00, 0x80])
    np.testing.assert_array_equal(big, little)


def test_rgb8_is_a_zero_copy_view() -> None:
    packed = RNG.integers(0, 256, (H, W * 3), dtype=np.uint8)
    for pad in (0, 5):
        data, step = _padded(packed, pad)
        out = decode_image(data, 'rgb8', H, W, step)
        assert np.shares_memory(out, np.frombuffer(data, np.uint8))
    arr = packed.reshape(-1).copy()
    assert np.shares_memory(decode_image(arr, 'rgb8', H, W, W * 3), arr)
    assert np.shares_memory(decode_image(memoryview(arr), 'rgb8', H, W, W * 3), arr)


@pytest.mark.parametrize('kwargs, reason', [
    (dict(encoding='rgb16', height=H, width=W, step=W * 6), 'encoding'),
    (dict(encoding='rgb8', height=0, width=W, step=W * 3), 'size'),
    (dict(encoding='rgb8', height=H, width=W, step=W * 3 - 1), 'step'),
    (dict(encoding='mono16', height=H, width=W, step=W * 2 - 2), 'step'),
    (dict(encoding='nv12', height=H - 1, width=W, step=W), 'size'),
    (dict(encoding='yuv422', height=H, width=W - 1, step=W * 2), 'size'),
    (dict(encoding='rgb8', height=H + 1, width=W, step=W * 3), 'truncated'),
    (dict(encoding='rgb8', height=H - 1, width=W, step=W * 3), 'size'),
])
def test_bad_buffers_raise_typed_errors(kwargs: dict, reason: str) -> None:
    data = bytes(H * W * 3)
    with pytest.raises(FrameError) as ei:
        decode_image(data, **kwargs)
    assert ei.value.reason == reason and ei.value.reason in FRAME_ERROR_REASONS
    assert str(kwargs['encoding']) in str(ei.value)


def test_compressed_jpeg_png_and_corrupt() -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :W // 2] = (200, 30, 60)
    ok, png = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    np.testing.assert_array_equal(decode_compressed(png.tobytes(), 'png'), rgb)
    ok, jpg = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = decode_compressed(jpg.tobytes(), 'jpeg')
    np.testing.assert_array_equal(out, cv2.cvtColor(cv2.imdecode(jpg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    assert abs(int(out[5, 5, 0]) - 200) < 10
    with pytest.raises(FrameError) as ei:
        decode_compressed(jpg.tobytes()[: len(jpg) // 2], 'jpeg')
    assert ei.value.reason == 'truncated'
    with pytest.raises(FrameError) as ei:
        decode_compressed(b'\x00garbage' * 10, 'jpeg')
    assert ei.value.reason == 'corrupt'
    with pytest.raises(FrameError) as ei:
        decode_compressed(b'', 'png')
    assert ei.value.reason == 'truncated'


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'yuv422', 'bayer_rggb8'])
def test_identical_to_cv_bridge(encoding: str) -> None:
    cv_bridge = pytest.importorskip('cv_bridge')
    pytest.importorskip('sensor_msgs.msg')
    from sensor_msgs.msg import Image

    bpp, rows, _ = REFERENCE[encoding]
    packed = RNG.integers(0, 256, (rows, W * bpp), dtype=np.uint8)
    msg = Image(height=H, width=W, encoding=encoding, step=W * bpp, is_bigendian=0, data=packed.tobytes())
    ref = cv_bridge.CvBridge().imgmsg_to_cv2(msg, desired_encoding='rgb8')
    np.testing.assert_array_equal(decode_image(packed.tobytes(), encoding, H, W, W * bpp), ref)


def test_step_larger_than_the_data_is_refused_never_padded() -> None:
    # 1x1 rgb8 with step 2^32-1 and 3 bytes: used to allocate 4 GB of padding
    with pytest.raises(FrameError) as ei:
        decode_image(b'\x01\x02\x03', 'rgb8', 1, 1, 2**32 - 1)
    assert ei.value.reason == 'step' and 'larger than the data implies' in str(ei.value)
    # only the last row's padding missing: refused as well (the data does not match step * height)
    with pytest.raises(FrameError) as ei:
        decode_image(b'\x00' * (16 + 12), 'rgb8', 2, 4, 16)
    assert ei.value.reason == 'step'


def test_max_pixels_refuses_raw_and_compressed_before_decoding() -> None:
    import struct
    with pytest.raises(FrameError) as ei:
        decode_image(b'', 'mono8', 5000, 4000, 4000, max_pixels=16_000_000)
    assert ei.value.reason == 'size' and 'input.max_decoded_pixels' in str(ei.value)
    ok, enc = cv2.imencode('.jpg', np.zeros((16, 16, 3), np.uint8))
    data = bytearray(enc.tobytes())
    sof = data.find(b'\xff\xc0')
    data[sof + 5:sof + 9] = struct.pack('>HH', 65500, 65500)
    with pytest.raises(FrameError) as ei:
        decode_compressed(bytes(data), 'jpeg')
    assert ei.value.reason == 'size' and '65500x65500' in str(ei.value)
    # above the limit of OpenCV itself: its cv2.error is a corrupt frame, not an engine failure
    with pytest.raises(FrameError) as ei:
        decode_compressed(bytes(data), 'jpeg', max_pixels=1 << 40)
    assert ei.value.reason == 'corrupt'
    png = cv2.imencode('.png', np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    huge = png[:16] + struct.pack('>II', 16384, 16384) + png[24:]
    with pytest.raises(FrameError) as ei:
        decode_compressed(huge, 'png')
    assert ei.value.reason == 'size'
    from evit_ros.pipeline.decode import compressed_size
    assert compressed_size(np.frombuffer(png, np.uint8)) == ('png', 8, 8)
    assert compressed_size(np.frombuffer(enc.tobytes(), np.uint8)) == ('jpeg', 16, 16)


def test_jpeg_with_more_than_64_kb_of_app_segments_before_the_frame_header_decodes() -> None:
    """EXIF thumbnails and ICC profiles put large APPn segments before SOF; the header walk must skip them."""
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (200, 40, 10)
    ok, enc = cv2.imencode('.jpg', rgb[..., ::-1])
    assert ok
    jpeg = enc.tobytes()
    app = b''.join(b'\xff\xe1' + (65533 + 2).to_bytes(2, 'big') + bytes([k]) * 65533 for k in range(3))  # ~192 KB
    fat = jpeg[:2] + app + jpeg[2:]
    assert len(fat) > 3 * 65536 and fat.index(b'\xff\xc0') > 65536
    out = decode_compressed(np.frombuffer(fat, np.uint8), 'jpeg')
    np.testing.assert_array_equal(out, decode_compressed(enc, 'jpeg'))
    with pytest.raises(FrameError) as err:     # a segment length running past the end is still refused
        decode_compressed(np.frombuffer(jpeg[:2] + b'\xff\xe1\xff\xff' + b'\0' * 100 + b'\xff\xd9', np.uint8))
    assert err.value.reason == 'corrupt'
