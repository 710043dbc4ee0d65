"""Write synthetic scenes as PNG files and as a ROS 2 bag (MCAP) that the node and ``evit-ros eval`` consume.

The bag holds two cameras, the way a car would publish them:

* ``/front/image_raw`` (``sensor_msgs/Image``, rgb8) + ``/front/camera_info`` + ``/front/labels`` (mono8 trainIds)
* ``/rear/image_raw/compressed`` (``sensor_msgs/CompressedImage``, JPEG) + ``/rear/camera_info`` +
  ``/rear/labels``

Label messages carry the same header stamp as their image, so an evaluator pairs them exactly. Only
``rosbags`` is used (no ROS installation needed). Frames are held-out scenes (seeds disjoint from training).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from evit_ros.errors import ConfigError, DataError
from evit_ros.synthetic.scenes import CameraModel, generate_scene
from evit_ros.synthetic.train import HELDOUT_SEED_BASE

# The demo rig: both cameras share intrinsics and mounting height; the rear one looks backwards.
DEMO_CAMERA = CameraModel(focal_frac=0.8, horizon_frac=0.45, height_m=1.5)
START_NS = 1_700_000_000 * 1_000_000_000


@dataclass(frozen=True)
class CameraSpec:
    """One camera in the synthetic rig: topics, transport, and where its scene seeds start."""

    name: str
    transport: str          # 'raw' (rgb8 Image) or 'compressed' (JPEG CompressedImage)
    seed_offset: int
    yaw_deg: float = 0.0
    x_m: float = 0.0

    @property
    def image_topic(self) -> str:
        return f'/{self.name}/image_raw' + ('/compressed' if self.transport == 'compressed' else '')

    @property
    def info_topic(self) -> str:
        return f'/{self.name}/camera_info'

    @property
    def label_topic(self) -> str:
        return f'/{self.name}/labels'

    @property
    def frame_id(self) -> str:
        return f'{self.name}_camera_optical'


DEMO_CAMERAS: tuple[CameraSpec, ...] = (
    CameraSpec('front', 'raw', 0, 0.0, 1.5),
    CameraSpec('rear', 'compressed', 500_000, 180.0, -1.0),
)


@dataclass(frozen=True)
class SyntheticDataset:
    """What :func:`write_synthetic` produced: paths and topic names for the eval and the node."""

    root: Path
    bag: Path
    frames: int
    height: int
    width: int
    cameras: tuple[CameraSpec, ...]
    jpeg_quality: int

    def to_json(self) -> dict[str, Any]:
        return {'root': str(self.root), 'bag': str(self.bag), 'frames': self.frames, 'height': self.height,
                'width': self.width, 'jpeg_quality': self.jpeg_quality,
                'cameras': [{'name': c.name, 'transport': c.transport, 'image_topic': c.image_topic,
                             'camera_info_topic': c.info_topic, 'label_topic': c.label_topic,
                             'frame_id': c.frame_id, 'seed_offset': c.seed_offset} for c in self.cameras]}


def camera_info_k(camera: CameraModel, height: int, width: int) -> list[float]:
    """Row-major 3x3 K of the synthetic pinhole camera."""
    fx, fy, cx, cy = camera.intrinsics(height, width)
    return [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]


def frame_seed(seed: int, camera: CameraSpec, index: int) -> int:
    """Scene seed of frame ``index`` of ``camera`` (held-out range, never used in training)."""
    return HELDOUT_SEED_BASE + seed * 1_000_000 + camera.seed_offset + index


def _messages(typestore: Any) -> dict[str, Any]:
    t = typestore.types
    return {k: t[f'{k}'] for k in ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage',
                                   'sensor_msgs/msg/CameraInfo', 'sensor_msgs/msg/RegionOfInterest',
                                   'std_msgs/msg/Header', 'builtin_interfaces/msg/Time')}


def write_synthetic(out: str | Path, frames: int = 20, seed: int = 0, height: int = 256, width: int = 512,
                    cameras: tuple[CameraSpec, ...] = DEMO_CAMERAS, rate_hz: float = 10.0,
                    jpeg_quality: int = 92, write_png: bool = True, overwrite: bool = True) -> SyntheticDataset:
    """Generate ``frames`` scenes per camera into ``out/`` (PNG images + labels, ``out/bag`` MCAP, index.json)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    if frames < 1 or frames > 100_000:
        raise ConfigError(f'frames={frames} must be in [1, 100000]')
    if not (0.1 <= rate_hz <= 1000):
        raise ConfigError(f'rate_hz={rate_hz} must be in [0.1, 1000]')
    if not (1 <= jpeg_quality <= 100):
        raise ConfigError(f'jpeg_quality={jpeg_quality} must be in [1, 100]')
    root = Path(out)
    bag = root / 'bag'
    if bag.exists():
        if not overwrite:
            raise DataError(f'{bag} already exists; remove it or choose another --out')
        shutil.rmtree(bag)
    root.mkdir(parents=True, exist_ok=True)
    ts = get_typestore(Stores.ROS2_JAZZY)
    M = _messages(ts)
    k = np.array(camera_info_k(DEMO_CAMERA, height, width), np.float64)
    fx, fy, cx, cy = DEMO_CAMERA.intrinsics(height, width)
    p = np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], np.float64)
    period_ns = int(round(1e9 / rate_hz))

    def header(stamp_ns: int, frame_id: str) -> Any:
        return M['std_msgs/msg/Header'](stamp=M['builtin_interfaces/msg/Time'](
            sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000), frame_id=frame_id)

    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {}
        for cam in cameras:
            img_type = 'sensor_msgs/msg/CompressedImage' if cam.transport == 'compressed' else 'sensor_msgs/msg/Image'
            conns[cam.name] = (writer.add_connection(cam.image_topic, img_type, typestore=ts),
                               writer.add_connection(cam.info_topic, 'sensor_msgs/msg/CameraInfo', typestore=ts),
                               writer.add_connection(cam.label_topic, 'sensor_msgs/msg/Image', typestore=ts))
            if write_png:
                (root / 'images' / cam.name).mkdir(parents=True, exist_ok=True)
                (root / 'labels' / cam.name).mkdir(parents=True, exist_ok=True)
        for i in range(frames):
            for j, cam in enumerate(cameras):
                stamp = START_NS + i * period_ns + j * 1000   # cameras are not hardware-synchronized
                rgb, lab = generate_scene(frame_seed(seed, cam, i), height, width, DEMO_CAMERA)
                hdr = header(stamp, cam.frame_id)
                c_img, c_info, c_lab = conns[cam.name]
                if cam.transport == 'compressed':
                    ok, jpg = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                           [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
                    if not ok:
                        raise DataError(f'JPEG encoding failed for frame {i} of {cam.name}')
                    msg = M['sensor_msgs/msg/CompressedImage'](header=hdr, format='rgb8; jpeg compressed bgr8',
                                                               data=np.frombuffer(jpg.tobytes(), np.uint8))
                    writer.write(c_img, stamp, ts.serialize_cdr(msg, 'sensor_msgs/msg/CompressedImage'))
                else:
                    msg = M['sensor_msgs/msg/Image'](header=hdr, height=height, width=width, encoding='rgb8',
                                                     is_bigendian=0, step=width * 3, data=rgb.reshape(-1))
                    writer.write(c_img, stamp, ts.serialize_cdr(msg, 'sensor_msgs/msg/Image'))
                info = M['sensor_msgs/msg/CameraInfo'](
                    header=hdr, height=height, width=width, distortion_model='plumb_bob', d=np.zeros(5), k=k,
                    r=np.eye(3).reshape(-1), p=p, binning_x=0, binning_y=0,
                    roi=M['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0,
                                                              do_rectify=False))
                writer.write(c_info, stamp, ts.serialize_cdr(info, 'sensor_msgs/msg/CameraInfo'))
                lmsg = M['sensor_msgs/msg/Image'](header=hdr, height=height, width=width, encoding='mono8',
                                                  is_bigendian=0, step=width, data=lab.reshape(-1))
                writer.write(c_lab, stamp, ts.serialize_cdr(lmsg, 'sensor_msgs/msg/Image'))
                if write_png:
                    cv2.imwrite(str(root / 'images' / cam.name / f'{i:06d}.png'),
                                cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                    cv2.imwrite(str(root / 'labels' / cam.name / f'{i:06d}.png'), lab)
    ds = SyntheticDataset(root, bag, frames, height, width, tuple(cameras), jpeg_quality)
    (root / 'index.json').write_text(json.dumps(ds.to_json(), indent=2))
    return ds
