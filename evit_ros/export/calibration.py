"""INT8 calibration from real frames: an image folder or a rosbag topic, batched to the engine input.

Implicit calibration is the TensorRT 8.6 (JetPack 6.0) path only; TensorRT 10 builds explicitly
quantized (Q/DQ) graphs instead. The calibrator logic (batching, cache file) is plain Python; only the
device copy needs CUDA (cuda-python, never PyTorch) and is injected as ``to_device(batch) -> int`` (a
device pointer), so everything else is testable on CPU. :func:`make_entropy_calibrator` mixes the logic
into TensorRT's ``IInt8EntropyCalibrator2``. The cache file is keyed by the ONNX, the calibration data
and the precision policy (:func:`calibration_cache_path`).
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.errors import DataError, EngineError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')


def _resize(rgb: np.ndarray, hw: tuple[int, int] | None) -> np.ndarray:
    """``hw=None`` keeps the camera size (the caller runs the node's own preprocessing)."""
    import cv2
    if hw is None or rgb.shape[:2] == hw:
        return rgb
    return cv2.resize(rgb, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def iter_image_folder(folder: str | Path, hw: tuple[int, int] | None) -> Iterator[np.ndarray]:
    """RGB uint8 ``[H, W, 3]`` frames from the images in ``folder`` (sorted by name), resized to ``hw``."""
    import cv2
    d = Path(folder)
    if not d.is_dir():
        raise DataError(f'image folder {d} does not exist; pass a folder of camera images')
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f'image folder {d} has no images ({", ".join(IMAGE_SUFFIXES)})')
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            log.warning('skipping unreadable image %s', f)
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


def iter_bag_frames(bag: str | Path, topic: str, hw: tuple[int, int] | None, every: int = 1) -> Iterator[np.ndarray]:
    """RGB frames of an Image/CompressedImage ``topic`` in a ROS 2 bag (every ``every``-th message)."""
    from rosbags.highlevel import AnyReader
    p = Path(bag)
    if not p.exists():
        raise DataError(f'bag {p} does not exist; pass a ROS 2 bag directory, .mcap or .db3')
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
                log.warning('skipping frame %d of %s: %s', i, topic, exc)


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


def cuda_to_device() -> Callable[[np.ndarray], int]:
    """Default ``to_device``: one reusable pinned + device buffer pair through cuda-python (no PyTorch)."""
    from evit_ros.device import cuda_runtime
    from evit_ros.errors import BackendError
    try:
        cuda_runtime.runtime()
    except BackendError as exc:
        raise EngineError(f'INT8 calibration copies each batch to the GPU: {exc}') from exc
    if cuda_runtime.device_count()[0] < 1:
        raise EngineError('INT8 calibration needs a CUDA device; calibrate on the Jetson')
    holder: dict[str, Any] = {}

    def to_device(batch: np.ndarray) -> int:
        buf, host = holder.get('buf'), holder.get('host')
        if buf is None or host is None or host.array.shape != batch.shape or host.dtype != batch.dtype:
            for old in (buf, host):
                if old is not None:
                    old.free()
            host = holder['host'] = cuda_runtime.PinnedBuffer(batch.shape, batch.dtype)
            buf = holder['buf'] = cuda_runtime.DeviceBuffer(host.nbytes)
            holder['stream'] = holder.get('stream') or cuda_runtime.Stream()
        stream = holder['stream']
        host.array[...] = batch
        stream.copy_htod(buf.ptr, host.array, host.nbytes)
        stream.synchronize()
        return int(buf.ptr)
    return to_device


def calibration_cache_path(directory: str | Path, onnx_sha256: str, source: str, policy: int) -> Path:
    """``<dir>/calib-<onnx sha>-<source hash>-p<policy>.cache``: a cache per model, data set and policy.

    TensorRT's docs: recalibrate when the network or the calibration data change; one shared cache file
    would silently reuse another model's scales.
    """
    src = hashlib.sha256(source.encode()).hexdigest()[:16]
    return Path(directory) / f'calib-{onnx_sha256[:16]}-{src}-p{policy}.cache'


def calibration_source(images: str | None = None, bag: str | None = None, topic: str | None = None,
                       max_batches: int | None = None) -> str:
    """A stable description of the calibration frames: folder file names/sizes/mtimes, or bag + topic."""
    parts: list[str] = [f'max_batches={max_batches}']
    if images:
        d = Path(images)
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if d.is_dir() else []
        parts.append(f'images={d.resolve()}')
        parts += [f'{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}' for p in files]
    if bag:
        b = Path(bag)
        stat = [f'{p.name}:{p.stat().st_size}' for p in sorted(b.rglob('*') if b.is_dir() else [b]) if p.is_file()]
        parts += [f'bag={b.resolve()}', f'topic={topic}', *stat]
    return '\n'.join(parts)


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
            self._to_device = cuda_to_device()
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
