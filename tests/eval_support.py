"""Helpers for the eval tests: bag writing with the typestore, and a color-threshold segmenter.

The segmenter is a stand-in used only where the test is about bag handling and metric arithmetic: its
prediction is a known function of the pixel (class = red // 10), so the expected IoUs can be counted by hand.
It is module-level so ``--jobs`` spawn workers can unpickle it. End-to-end tests use the real pipeline + ORT.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evit_ros.datasets import CITYSCAPES_COLORS
from evit_ros.eval.bags import COMPRESSED, IMAGE, BagWriter

PALETTE = np.zeros((256, 3), np.uint8)
PALETTE[:19] = np.asarray(CITYSCAPES_COLORS, np.uint8)


@dataclass
class _Result:
    labels: np.ndarray
    color: np.ndarray | None = None
    overlay: np.ndarray | None = None
    confidence: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


def red_labels(rgb: np.ndarray) -> np.ndarray:
    """RedSegmenter's rule, min(red // 10, 18): the ground truth the tests write is what it predicts."""
    return np.minimum(rgb[..., 0] // 10, 18).astype(np.uint8)


class RedSegmenter:
    """labels = min(red // 10, 18): exact, deterministic, independent of the metric code under test."""

    def process(self, frames: list[np.ndarray], *, want_color: bool = True, want_overlay: bool = True,
                want_confidence: bool = False) -> list[_Result]:
        out = []
        for f in frames:
            labels = red_labels(f)
            color = PALETTE[labels] if want_color else None
            overlay = ((f.astype(np.uint16) + PALETTE[labels]) // 2).astype(np.uint8) if want_overlay else None
            out.append(_Result(labels, color, overlay, None, {'preprocess': 0.1, 'infer': 1.0, 'postprocess': 0.2}))
        return out


def red_factory() -> RedSegmenter:
    return RedSegmenter()


POISON_GREEN = 99   # frames with this green value make FaultySegmenter fail every time (a "poisoned" bag)
HANG_GREEN = 77     # ... or block for a minute after creating the file ``<marker>.hang`` (to test Ctrl-C)


class FaultySegmenter(RedSegmenter):
    """RedSegmenter with injected faults: a poisoned frame always raises; with ``marker`` the first call in the
    whole run (across processes and Ray actors: the marker file is created once) raises or kills the process."""

    def __init__(self, marker: str = '', mode: str = 'raise') -> None:
        self.marker, self.mode = marker, mode

    def process(self, frames: list[np.ndarray], **kw: bool) -> list[_Result]:
        import os
        if any(int(f[0, 0, 1]) == POISON_GREEN for f in frames):
            raise RuntimeError('injected fault: poisoned frame')
        if any(int(f[0, 0, 1]) == HANG_GREEN for f in frames):
            import time
            Path(self.marker + '.hang').touch()
            time.sleep(60)
        if self.marker and self.mode != 'hang':
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                if self.mode == 'exit':
                    os._exit(3)              # the worker process is lost mid-shard
                raise RuntimeError('injected fault: transient')
        return super().process(frames, **kw)


@dataclass(frozen=True)
class FaultyFactory:
    """Picklable factory (module level) for --jobs processes and Ray actors."""

    marker: str = ''
    mode: str = 'raise'

    def __call__(self) -> FaultySegmenter:
        return FaultySegmenter(self.marker, self.mode)


def write_drive(path: Path, seconds: float, hz: float = 4.0, seed: int = 0, green: int = 40,
                log0: int = 1_000_000_000_000) -> Path:
    """A labelled drive of ``seconds`` log time: labels arrive up to 0.4 s before or after their image (so pairs
    straddle slice edges), some images have no label, some labels no image, a few labels are corrupted."""
    rng = np.random.default_rng(seed)
    frames = []
    n = int(seconds * hz)
    stamp0 = 1_700_000_000_000_000_000 + seed * 10**12
    for i in range(n):
        log = log0 + int(i * 1e9 / hz)
        st = stamp0 + i * 50_000_000
        rgb = scene(i + seed)
        rgb[..., 1] = green
        frames.append({'topic': '/front/image_raw', 'stamp': st, 'rgb': rgb, 'log': log})
        r = rng.random()
        if r < 0.1:
            continue                                   # image without label
        gt = np.minimum(rgb[..., 0] // 10, 18).astype(np.uint8)
        if r < 0.5:
            gt[rng.integers(0, 40):, :rng.integers(1, 60)] = rng.integers(0, 19)
        if r > 0.95:
            gt[:4] = 255
        lag = int(rng.uniform(-0.4, 0.4) * 1e9)
        frames.append({'topic': '/front/labels', 'stamp': st, 'label': gt, 'log': log + lag})
        if r > 0.97:                                   # a label whose image was never recorded
            frames.append({'topic': '/front/labels', 'stamp': st + 1, 'label': gt, 'log': log + lag + 1})
    frames.sort(key=lambda f: f['log'])
    return write_bag(path, frames)


def scene(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """An RGB frame of vertical class stripes (red = 10 * class + 5), shifted per frame index."""
    img = np.zeros((h, w, 3), np.uint8)
    classes = np.array([0, 1, 2, 8, 10, 13])
    cols = (np.arange(w) // 8 + i) % len(classes)
    img[..., 0] = (classes[cols] * 10 + 5)[None, :]
    img[..., 1] = 40
    img[h // 2:, :, 0] = 5          # bottom half: road (class 0)
    return img


def write_bag(path: Path, frames: list[dict], storage: str = 'mcap') -> Path:
    """Write frames: dicts with topic, stamp, and one of rgb (+compressed fmt), label, raw (bytes) / msg."""
    with BagWriter(path, storage=storage) as w:
        f = w.factory
        for i, fr in enumerate(frames):
            log = fr.get('log', 1_000_000_000 + i * 1000)
            if 'raw' in fr:
                w.write_raw(fr['topic'], fr.get('type', IMAGE), fr['raw'], log)
            elif 'msg' in fr:
                w.write(fr['topic'], fr.get('type', IMAGE), fr['msg'], log)
            elif 'label' in fr:
                w.write(fr['topic'], IMAGE, f.image(fr['label'], fr['stamp'], 'mono8', 'cam'), log)
            elif fr.get('compressed'):
                w.write(fr['topic'], COMPRESSED, f.compressed(fr['rgb'], fr['stamp'], fr['compressed']), log)
            else:
                w.write(fr['topic'], IMAGE, f.image(fr['rgb'], fr['stamp'], 'rgb8', 'cam'), log)
    return path


def export_tiny_onnx(out: Path, height: int = 64, width: int = 128) -> Path:
    """A b0 ONNX (labels+confidence head) with seeded random weights; skips the test when a package is missing."""
    import pytest
    try:
        import torch

        from evit_ros.backends import create_backend  # noqa: F401
        from evit_ros.export.onnx_export import export_onnx
        from evit_ros.model import create_model
    except ImportError as exc:
        pytest.skip(f'needs the model, export and backends packages (not merged yet: {exc})')
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model('efficientvit-seg-b0-cityscapes', pretrained=False).eval()
    export_onnx('efficientvit-seg-b0-cityscapes', out, height=height, width=width, model=model,
                head='labels+confidence')
    return out


def echo_node_main(camera: str = 'front') -> None:
    """A stand-in ROS node for the player test: mask = red // 10 of each received image, header copied."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node('eval_echo_node')
    pub = node.create_publisher(Image, f'/segmentation/{camera}/mask', QoSProfile(depth=10))

    def cb(msg: Image) -> None:
        rgb = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
        out = Image(header=msg.header, height=msg.height, width=msg.width, encoding='mono8', step=msg.width)
        out.data = np.minimum(rgb[..., 0] // 10, 18).astype(np.uint8).tobytes()
        pub.publish(out)

    node.create_subscription(Image, f'/{camera}/image_raw', cb,
                             QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    echo_node_main()
