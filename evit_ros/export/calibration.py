"""INT8 calibration from real frames: an image folder or a rosbag topic, batched to the engine input.

The calibrator logic (batching, cache file) is plain Python; only the device copy needs CUDA and is
injected as ``to_device(batch) -> int`` (a device pointer), so everything else is testable on CPU.
:func:`make_entropy_calibrator` mixes the logic into TensorRT's ``IInt8EntropyCalibrator2``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.errors import DataError, EngineError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')


def _resize(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import cv2
    if rgb.shape[:2] == hw:
        return rgb
    return cv2.resize(rgb, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def iter_image_folder(folder: str | Path, hw: tuple[int, int]) -> Iterator[np.ndarray]:
    """RGB uint8 ``[H, W, 3]`` frames from the images in ``folder`` (sorted by name), resized to ``hw``."""
    import cv2
    d = Path(folder)
    if not d.is_dir():
        raise DataError(f'calibration folder {d} does not exist; pass a folder of camera images')
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f'calibration folder {d} has no images ({", ".join(IMAGE_SUFFIXES)})')
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            log.warning('skipping unreadable calibration image %s', f)
            continue
        yield _resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), hw)


def decode_image_msg(msg: Any) -> np.ndarray:
    """``sensor_msgs/Image`` or ``CompressedImage`` (rosbags object) -> RGB uint8 ``[H, W, 3]``."""
    import cv2
    if hasattr(msg, 'format'):  # CompressedImage
        bgr = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError(f'compressed image ({msg.format}) cannot be decoded')
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    enc = str(msg.encoding).lower()
    channels = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}
    if enc not in channels:
        raise DataError(f'image encoding {msg.encoding!r} is not supported for calibration; use rgb8/bgr8/mono8')
    h, w, step, c = int(msg.height), int(msg.width), int(msg.step), channels[enc]
    data = np.frombuffer(bytes(msg.data), np.uint8)
    if step < w * c or data.size < h * step:
        raise DataError(f'image {w}x{h} {enc}: step {step} / {data.size} bytes do not match the size')
    img = data[:h * step].reshape(h, step)[:, :w * c].reshape(h, w, c)
    if enc == 'rgb8':
        return img.copy()
    if enc == 'mono8':
        return np.repeat(img, 3, axis=2)
    code = {'bgr8': cv2.COLOR_BGR2RGB, 'rgba8': cv2.COLOR_RGBA2RGB, 'bgra8': cv2.COLOR_BGRA2RGB}[enc]
    return cv2.cvtColor(img, code)


def iter_bag_frames(bag: str | Path, topic: str, hw: tuple[int, int], every: int = 1) -> Iterator[np.ndarray]:
    """RGB frames of an Image/CompressedImage ``topic`` in a ROS 2 bag (every ``every``-th message)."""
    from rosbags.highlevel import AnyReader
    p = Path(bag)
    if not p.exists():
        raise DataError(f'calibration bag {p} does not exist')
    with AnyReader([p]) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            topics = sorted({c.topic for c in reader.connections})
            raise DataError(f'bag {p} has no topic {topic!r}; image topics available: {topics}')
        for i, (conn, _t, raw) in enumerate(reader.messages(connections=conns)):
            if i % max(1, every):
                continue
            try:
                yield _resize(decode_image_msg(reader.deserialize(raw, conn.msgtype)), hw)
            except DataError as exc:
                log.warning('skipping calibration frame %d: %s', i, exc)


def iter_batches(frames: Iterable[np.ndarray], batch: int, input_format: str = 'uint8-nhwc',
                 max_batches: int | None = None) -> Iterator[np.ndarray]:
    """Group frames into contiguous batches of the engine input shape.

    A partial last batch is completed by repeating its own frames (TensorRT needs full batches);
    ``float-nchw`` batches are normalized with the ImageNet mean/std as the graph expects.
    """
    from evit_ros.contract import IMAGENET_MEAN, IMAGENET_STD
    if batch < 1:
        raise EngineError(f'calibration batch={batch} must be >= 1')
    mean = np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)

    def finish(items: list[np.ndarray]) -> np.ndarray:
        while len(items) < batch:
            items.append(items[len(items) % max(1, len(items))])
        arr = np.ascontiguousarray(np.stack(items[:batch]))
        if input_format == 'float-nchw':
            arr = np.ascontiguousarray(((arr.transpose(0, 3, 1, 2).astype(np.float32) / 255.0) - mean) / std)
        return arr

    pending: list[np.ndarray] = []
    emitted = 0
    for frame in frames:
        pending.append(frame)
        if len(pending) == batch:
            yield finish(pending)
            pending = []
            emitted += 1
            if max_batches is not None and emitted >= max_batches:
                return
    if pending:
        yield finish(pending)


def torch_cuda_to_device() -> Callable[[np.ndarray], int]:
    """Default ``to_device``: one reusable CUDA buffer via PyTorch; EngineError if CUDA is unavailable."""
    try:
        import torch
    except ImportError as exc:
        raise EngineError('INT8 calibration needs a CUDA copy of each batch; install PyTorch with CUDA '
                          '(the Jetson wheel) or pass to_device') from exc
    if not torch.cuda.is_available():
        raise EngineError('INT8 calibration needs a CUDA device (torch.cuda.is_available() is False); '
                          'calibrate on the Jetson')
    holder: dict[str, Any] = {}

    def to_device(batch: np.ndarray) -> int:
        host = torch.from_numpy(batch)
        buf = holder.get('buf')
        if buf is None or buf.shape != host.shape or buf.dtype != host.dtype:
            buf = holder['buf'] = torch.empty(host.shape, dtype=host.dtype, device='cuda')
        buf.copy_(host)
        torch.cuda.synchronize()
        return int(buf.data_ptr())
    return to_device


class EntropyCalibrator:
    """Calibrator logic (TensorRT's calibrator protocol); :func:`make_entropy_calibrator` adds the TensorRT base."""

    def __init__(self, batches: Iterable[np.ndarray], batch_size: int, cache_file: str | Path | None,
                 to_device: Callable[[np.ndarray], int] | None = None) -> None:
        self._batches = iter(batches)
        self._batch_size = int(batch_size)
        self.cache_file = Path(cache_file) if cache_file else None
        self._to_device = to_device
        self.batches_served = 0

    def get_batch_size(self) -> int:
        return self._batch_size

    def get_batch(self, names: list[str], *args: Any) -> list[int] | None:
        """Device pointer of the next batch, or None when the data is exhausted (ends calibration)."""
        batch = next(self._batches, None)
        if batch is None:
            log.info('calibration: %d batches used', self.batches_served)
            return None
        if batch.shape[0] != self._batch_size:
            raise EngineError(f'calibration batch has {batch.shape[0]} frames, engine expects {self._batch_size}')
        if self._to_device is None:
            self._to_device = torch_cuda_to_device()
        self.batches_served += 1
        if self.batches_served % 10 == 1:
            log.info('calibration batch %d', self.batches_served)
        return [self._to_device(batch)]

    def read_calibration_cache(self, *args: Any) -> bytes | None:
        if self.cache_file is not None and self.cache_file.is_file():
            log.info('using calibration cache %s', self.cache_file)
            return self.cache_file.read_bytes()
        return None

    def write_calibration_cache(self, cache: Any, *args: Any) -> None:
        if self.cache_file is None:
            return
        from evit_ros.export.engine_cache import atomic_write
        atomic_write(self.cache_file, bytes(memoryview(cache)))
        log.info('wrote calibration cache %s', self.cache_file)


def make_entropy_calibrator(batches: Iterable[np.ndarray], batch_size: int, cache_file: str | Path | None, *,
                            base: type | None = None, trt_module: Any = None,
                            to_device: Callable[[np.ndarray], int] | None = None) -> EntropyCalibrator:
    """An :class:`EntropyCalibrator` that is also a ``base`` (default ``trt.IInt8EntropyCalibrator2``)."""
    if base is None:
        if trt_module is None or not hasattr(trt_module, 'IInt8EntropyCalibrator2'):
            raise EngineError('this TensorRT has no IInt8EntropyCalibrator2 (TensorRT-RTX / 11 use explicit '
                              'quantization); build fp16 or fp32 instead')
        base = trt_module.IInt8EntropyCalibrator2
    base_cls: Any = base

    def init(self: Any, *a: Any, **kw: Any) -> None:
        base_cls.__init__(self)  # pybind11 bases must be initialized explicitly
        EntropyCalibrator.__init__(self, *a, **kw)

    cls = type('TrtEntropyCalibrator', (EntropyCalibrator, base), {'__init__': init})
    calib: EntropyCalibrator = cls(batches, batch_size, cache_file, to_device)
    return calib
