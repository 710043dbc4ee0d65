"""INT8 calibration data path: image folder and rosbag frames -> engine-shaped batches -> calibrator + cache.

Only the device copy (CUDA) and TensorRT's calibrator base class are faked; files, decoding, batching
and the cache are real.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from evit_ros.errors import DataError, EngineError
from evit_ros.export import calibration as cal

HW = (32, 48)


def _frame(i: int, h: int = 40, w: int = 60) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 10 * i          # R encodes the frame index
    img[..., 1] = 200
    img[..., 2] = 7
    return img


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    d = tmp_path / 'frames'
    d.mkdir()
    for i in range(5):
        cv2.imwrite(str(d / f'f{i:02d}.png'), cv2.cvtColor(_frame(i), cv2.COLOR_RGB2BGR))
    (d / 'notes.txt').write_text('not an image')
    return d


def test_image_folder_frames_are_rgb_sorted_and_resized(folder: Path) -> None:
    frames = list(cal.iter_image_folder(folder, HW))
    assert len(frames) == 5
    assert all(f.shape == (*HW, 3) and f.dtype == np.uint8 for f in frames)
    assert [int(f[0, 0, 0]) for f in frames] == [0, 10, 20, 30, 40]
    assert int(frames[0][0, 0, 1]) == 200 and int(frames[0][0, 0, 2]) == 7


def test_batches_have_engine_shape_and_partial_last_batch_is_filled(folder: Path) -> None:
    batches = list(cal.iter_batches(cal.iter_image_folder(folder, HW), 2))
    assert [b.shape for b in batches] == [(2, *HW, 3)] * 3
    assert [int(v) for v in batches[-1][:, 0, 0, 0]] == [40, 40]   # 5th frame repeated
    limited = list(cal.iter_batches(cal.iter_image_folder(folder, HW), 2, max_batches=1))
    assert len(limited) == 1
    nchw = next(cal.iter_batches(cal.iter_image_folder(folder, HW), 3, 'float-nchw'))
    assert nchw.shape == (3, 3, *HW) and nchw.dtype == np.float32
    assert nchw[0, 1, 0, 0] == pytest.approx((200 / 255 - 0.456) / 0.224, rel=1e-5)


def test_bad_sources_raise(tmp_path: Path) -> None:
    with pytest.raises(DataError, match='does not exist'):
        list(cal.iter_image_folder(tmp_path / 'nope', HW))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError, match='no images'):
        list(cal.iter_image_folder(tmp_path / 'empty', HW))


class FakeTrtCalibratorBase:
    """Stands in for trt.IInt8EntropyCalibrator2 (a GPU-only TensorRT class)."""

    def __init__(self) -> None:
        self.base_initialized = True


def test_calibrator_serves_device_pointers_then_none_and_round_trips_cache(folder: Path, tmp_path: Path) -> None:
    copies: list[np.ndarray] = []

    def fake_to_device(batch: np.ndarray) -> int:
        copies.append(batch.copy())
        return 0x1000 + len(copies)

    cache = tmp_path / 'calib' / 'model.calib'
    batches = cal.iter_batches(cal.iter_image_folder(folder, HW), 2)
    c = cal.make_entropy_calibrator(batches, 2, cache, base=FakeTrtCalibratorBase, to_device=fake_to_device)
    assert isinstance(c, FakeTrtCalibratorBase) and getattr(c, 'base_initialized', False)
    assert c.get_batch_size() == 2
    assert c.read_calibration_cache() is None
    ptrs = []
    while (p := c.get_batch(['images'])) is not None:
        ptrs.append(p)
    assert ptrs == [[0x1001], [0x1002], [0x1003]]
    assert [x.shape for x in copies] == [(2, *HW, 3)] * 3
    c.write_calibration_cache(memoryview(b'TRT-calib-table'))
    assert cache.read_bytes() == b'TRT-calib-table'
    c2 = cal.make_entropy_calibrator(iter(()), 2, cache, base=FakeTrtCalibratorBase, to_device=fake_to_device)
    assert c2.read_calibration_cache() == b'TRT-calib-table'


def test_calibrator_rejects_wrong_batch_and_missing_trt_class() -> None:
    c = cal.EntropyCalibrator(iter([np.zeros((1, *HW, 3), np.uint8)]), 2, None, to_device=lambda b: 1)
    with pytest.raises(EngineError, match='expects 2'):
        c.get_batch(['images'])
    with pytest.raises(EngineError, match='IInt8EntropyCalibrator2'):
        cal.make_entropy_calibrator(iter(()), 1, None, trt_module=object())


def _write_bag(path: Path, n: int) -> None:
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore
    ts = get_typestore(Stores.ROS2_HUMBLE)
    Image = ts.types['sensor_msgs/msg/Image']
    CImage = ts.types['sensor_msgs/msg/CompressedImage']
    Header = ts.types['std_msgs/msg/Header']
    Time = ts.types['builtin_interfaces/msg/Time']
    with Writer(path, version=8) as w:
        raw = w.add_connection('/cam/image_raw', Image.__msgtype__, typestore=ts)
        comp = w.add_connection('/cam/image_raw/compressed', CImage.__msgtype__, typestore=ts)
        for i in range(n):
            hdr = Header(stamp=Time(sec=i, nanosec=0), frame_id='cam')
            bgr = cv2.cvtColor(_frame(i), cv2.COLOR_RGB2BGR)
            msg = Image(header=hdr, height=40, width=60, encoding='bgr8', is_bigendian=0, step=60 * 3,
                        data=bgr.reshape(-1))
            w.write(raw, i * 10**8, ts.serialize_cdr(msg, Image.__msgtype__))
            ok, png = cv2.imencode('.png', bgr)
            assert ok
            cmsg = CImage(header=hdr, format='png', data=png.reshape(-1))
            w.write(comp, i * 10**8, ts.serialize_cdr(cmsg, CImage.__msgtype__))


def test_bag_frames_raw_and_compressed(tmp_path: Path) -> None:
    bag = tmp_path / 'calib_bag'
    _write_bag(bag, 3)
    raw = list(cal.iter_bag_frames(bag, '/cam/image_raw', HW))
    comp = list(cal.iter_bag_frames(bag, '/cam/image_raw/compressed', HW))
    assert len(raw) == len(comp) == 3
    for a, b, i in zip(raw, comp, range(3), strict=True):
        assert a.shape == (*HW, 3) and int(a[0, 0, 0]) == 10 * i and int(a[0, 0, 1]) == 200
        assert np.array_equal(a, b)
    with pytest.raises(DataError, match='no topic'):
        list(cal.iter_bag_frames(bag, '/other', HW))


def test_bag_topic_batches_feed_the_calibrator(tmp_path: Path) -> None:
    bag = tmp_path / 'calib_bag'
    _write_bag(bag, 5)
    frames = cal.iter_bag_frames(bag, '/cam/image_raw/compressed', HW, every=2)   # messages 0, 2, 4
    c = cal.make_entropy_calibrator(cal.iter_batches(frames, 2), 2, None, base=FakeTrtCalibratorBase,
                                    to_device=lambda b: int(b[0, 0, 0, 0]) * 1000 + int(b[1, 0, 0, 0]))
    assert c.get_batch(['images']) == [0 * 1000 + 20]
    assert c.get_batch(['images']) == [40 * 1000 + 40]   # partial last batch completed with its own frame
    assert c.get_batch(['images']) is None and c.batches_served == 2


def test_default_device_copy_goes_through_cuda_python(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``to_device`` the calibrator copies each batch with cuda-python (pinned staging, one device buffer)."""
    from trt_fakes import FakeCudart

    from evit_ros.device import cuda_runtime
    fake = FakeCudart()
    monkeypatch.setattr(cuda_runtime, 'cudart', fake)
    c = cal.EntropyCalibrator(cal.iter_batches(cal.iter_image_folder(folder, HW), 2), 2, None)
    first = c.get_batch(['images'])
    assert first is not None
    dev = fake.block_of(first[0], 2 * HW[0] * HW[1] * 3, 'device').reshape(2, *HW, 3)
    assert [int(v) for v in dev[:, 0, 0, 0]] == [0, 10]
    second = c.get_batch(['images'])
    assert second == first and fake.live('device') == fake.live('pinned') == 1    # buffers reused
    assert [int(v) for v in dev[:, 0, 0, 0]] == [20, 30]
    monkeypatch.setattr(cuda_runtime, 'cudart', FakeCudart(devices=0))
    with pytest.raises(EngineError, match='needs a CUDA device'):
        cal.EntropyCalibrator(iter([np.zeros((1, *HW, 3), np.uint8)]), 1, None).get_batch(['images'])
    monkeypatch.setattr(cuda_runtime, 'cudart', None)
    with pytest.raises(EngineError, match='cuda-python is not installed'):
        cal.EntropyCalibrator(iter([np.zeros((1, *HW, 3), np.uint8)]), 1, None).get_batch(['images'])


def test_calibration_cache_is_keyed_by_model_data_and_policy(folder: Path, tmp_path: Path) -> None:
    src = cal.calibration_source(str(folder), max_batches=64)
    base = cal.calibration_cache_path(tmp_path, 'a' * 64, src, 2)
    assert base.parent == tmp_path and base.name.startswith('calib-aaaaaaaaaaaaaaaa-')
    assert base.name.endswith('-p2.cache')
    assert cal.calibration_cache_path(tmp_path, 'a' * 64, src, 2) == base                  # stable
    assert cal.calibration_cache_path(tmp_path, 'b' * 64, src, 2) != base                  # another ONNX
    assert cal.calibration_cache_path(tmp_path, 'a' * 64, src, 3) != base                  # another policy
    assert cal.calibration_cache_path(tmp_path, 'a' * 64, cal.calibration_source(str(folder), max_batches=8),
                                      2) != base                                           # fewer frames
    bag = tmp_path / 'bag'
    _write_bag(bag, 2)
    assert cal.calibration_source(bag=str(bag), topic='/a') != cal.calibration_source(bag=str(bag), topic='/b')
    cv2.imwrite(str(folder / 'f99.png'), np.zeros((4, 4, 3), np.uint8))                  # the data set changed
    assert cal.calibration_cache_path(tmp_path, 'a' * 64, cal.calibration_source(str(folder), max_batches=64),
                                      2) != base
