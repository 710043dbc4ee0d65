"""Message <-> numpy conversions of the node (no cv_bridge): images, compressed images, grids, polygons."""
from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

pytest.importorskip('rclpy')

from builtin_interfaces.msg import Time  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from evit_ros.errors import FrameError  # noqa: E402
from evit_ros.ros import conversions as conv  # noqa: E402


def _rgb(h: int = 6, w: int = 10) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_image_roundtrip_keeps_header_and_bytes() -> None:
    rgb = _rgb()
    header = Image().header
    header.stamp, header.frame_id = Time(sec=12, nanosec=345), 'cam_optical'
    msg = conv.numpy_to_image(rgb, 'rgb8', header)
    assert (msg.height, msg.width, msg.step, msg.encoding) == (6, 10, 30, 'rgb8')
    assert isinstance(msg.data, array.array) and len(msg.data) == rgb.size
    assert msg.header.frame_id == 'cam_optical' and conv.stamp_to_ns(msg.header.stamp) == 12_000_000_345
    np.testing.assert_array_equal(conv.to_rgb(msg), rgb)
    np.testing.assert_array_equal(conv.image_to_numpy(msg), rgb)
    mono = rgb[..., 0].copy()
    m = conv.numpy_to_image(mono, 'mono8')
    assert m.step == 10
    np.testing.assert_array_equal(conv.image_to_numpy(m), mono)


def test_bgr8_and_padded_step_decode_to_rgb() -> None:
    rgb = _rgb()
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    padded = np.zeros((6, 32), np.uint8)
    padded[:, :30] = bgr.reshape(6, 30)
    msg = Image(height=6, width=10, encoding='bgr8', step=32)
    msg.data = array.array('B', padded.tobytes())
    np.testing.assert_array_equal(conv.to_rgb(msg), rgb)


@pytest.mark.parametrize(('kwargs', 'reason'), [
    ({'encoding': '32FC1', 'step': 40}, 'encoding'),
    ({'encoding': 'rgb8', 'step': 20}, 'step'),
    ({'encoding': 'rgb8', 'step': 30, 'cut': 50}, 'truncated'),
])
def test_bad_images_raise_with_reason(kwargs, reason) -> None:
    rgb = _rgb()
    msg = Image(height=6, width=10, encoding=kwargs['encoding'], step=kwargs['step'])
    data = rgb.tobytes()[:len(rgb.tobytes()) - kwargs.get('cut', 0)]
    msg.data = array.array('B', data)
    with pytest.raises(FrameError) as err:
        conv.to_rgb(msg)
    assert err.value.reason == reason


def test_compressed_roundtrip_and_corrupt_jpeg() -> None:
    rgb = _rgb(32, 48)
    png = conv.numpy_to_compressed(rgb, fmt='png')
    assert isinstance(png, CompressedImage) and 'png' in png.format
    np.testing.assert_array_equal(conv.to_rgb(png), rgb)
    jpg = conv.numpy_to_compressed(rgb, fmt='jpeg', quality=95)
    ref = cv2.cvtColor(cv2.imdecode(np.frombuffer(bytes(jpg.data), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(conv.to_rgb(jpg), ref)
    bad = CompressedImage(format='jpeg')
    raw = bytearray(jpg.data)
    raw[20:len(raw) - 2] = b'\x00' * (len(raw) - 22)
    bad.data = array.array('B', bytes(raw[:2]) + b'garbage' * 10 + bytes(raw[-2:]))
    with pytest.raises(FrameError) as err:
        conv.to_rgb(bad)
    assert err.value.reason == 'corrupt'
    cut = CompressedImage(format='jpeg')
    cut.data = array.array('B', bytes(jpg.data)[:len(jpg.data) // 2])
    with pytest.raises(FrameError) as err:
        conv.to_rgb(cut)
    assert err.value.reason == 'truncated'


def test_occupancy_grid_and_polygon_builders() -> None:
    cells = np.array([[0, 100, -1], [100, 0, 0]], np.int8)
    stamp = Time(sec=3, nanosec=4)
    grid = conv.occupancy_grid(cells, resolution=0.5, origin_xy=(0.0, -0.5), frame_id='base_link', stamp=stamp)
    assert (grid.info.width, grid.info.height, grid.info.resolution) == (3, 2, 0.5)
    assert grid.header.frame_id == 'base_link' and grid.header.stamp == stamp
    assert grid.info.origin.position.y == -0.5 and grid.info.origin.orientation.w == 1.0
    assert list(grid.data) == [0, 100, -1, 100, 0, 0]
    np.testing.assert_array_equal(conv.grid_to_numpy(grid), cells)
    poly = conv.polygon_stamped(np.array([[1.0, 2.0], [3.5, -1.0]]), frame_id='base_link', stamp=stamp)
    assert [(p.x, p.y, p.z) for p in poly.polygon.points] == [(1.0, 2.0, 0.0), (3.5, -1.0, 0.0)]
    assert poly.header.frame_id == 'base_link'


def test_numpy_to_image_refuses_mismatched_arrays() -> None:
    with pytest.raises(FrameError):
        conv.numpy_to_image(np.zeros((4, 4), np.uint8), 'rgb8')
    with pytest.raises(FrameError):
        conv.numpy_to_image(np.zeros((4, 4, 3), np.float32), 'rgb8')
    with pytest.raises(FrameError):
        conv.numpy_to_image(np.zeros((4, 4), np.uint8), 'yuv422')


def test_compressed_outputs_use_image_transports_format_strings_and_png_is_exact() -> None:
    from evit_ros.pipeline.decode import decode_compressed_mask
    # compressed_publisher.cpp: "<encoding>; <codec> compressed " + bgr8 for color, mono8 (jpeg) or nothing (png)
    assert conv.compressed_format('mono8', 'png') == 'mono8; png compressed '
    assert conv.compressed_format('mono8', 'jpeg') == 'mono8; jpeg compressed mono8'
    assert conv.compressed_format('rgb8', 'jpeg') == 'rgb8; jpeg compressed bgr8'
    assert conv.compressed_format('rgb8', 'png') == 'rgb8; png compressed bgr8'
    ids = np.random.default_rng(0).integers(0, 19, (33, 47)).astype(np.uint8)
    ids[0, :5] = 255
    msg = conv.encode_compressed(ids, 'mono8', 'png')
    np.testing.assert_array_equal(decode_compressed_mask(np.frombuffer(bytes(msg.data), np.uint8)), ids)
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[..., 0] = 200                                    # red: must stay red (BGR to the codec, as image_transport)
    scratch = np.empty_like(rgb)
    msg = conv.encode_compressed(rgb, 'rgb8', 'jpeg', quality=95, bgr=scratch)
    back = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
    assert abs(int(back[..., 2].mean()) - 200) <= 2 and back[..., 0].max() <= 3
    assert scratch[0, 0].tolist() == [0, 0, 200]         # the conversion went into the caller's buffer
    with pytest.raises(FrameError, match='webp'):
        conv.encode_compressed(ids, 'mono8', 'webp')
