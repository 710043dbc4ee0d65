"""The synthetic scene generator: determinism, exact labels, class coverage, color cues, and the bag writer."""
from __future__ import annotations

import numpy as np
import pytest

from evit_ros.datasets import CITYSCAPES, IGNORE_ID
from evit_ros.errors import ConfigError
from evit_ros.synthetic.scenes import SCENE_CLASSES, SKY, VEGETATION, CameraModel, generate_scene, scene_objects


def test_same_seed_same_bytes_different_seed_differs() -> None:
    a_rgb, a_lab = generate_scene(7, 96, 192)
    b_rgb, b_lab = generate_scene(7, 96, 192)
    assert a_rgb.tobytes() == b_rgb.tobytes()
    assert a_lab.tobytes() == b_lab.tobytes()
    c_rgb, c_lab = generate_scene(8, 96, 192)
    assert a_rgb.tobytes() != c_rgb.tobytes()
    assert a_lab.tobytes() != c_lab.tobytes()
    assert a_rgb.shape == (96, 192, 3) and a_rgb.dtype == np.uint8
    assert a_lab.shape == (96, 192) and a_lab.dtype == np.uint8


def test_scene_objects_returns_the_same_scene() -> None:
    rgb, lab = generate_scene(3, 128, 256)
    rgb2, lab2, objects = scene_objects(3, 128, 256)
    assert np.array_equal(rgb, rgb2) and np.array_equal(lab, lab2)
    assert len(objects) > 10


@pytest.mark.parametrize('seed', [0, 11, 42])
def test_each_drawn_object_has_its_class_where_it_is_visible(seed: int) -> None:
    _, lab, objects = scene_objects(seed, 128, 256)
    covered_later = np.zeros(lab.shape, bool)
    checked = 0
    # Walk from the last drawn (front-most) object back: visible pixels are those no later object covers.
    for obj in reversed(objects):
        assert obj.mask is not None
        assert obj.name == CITYSCAPES.class_names[obj.class_id]
        x0, y0, x1, y1 = obj.bbox
        ys, xs = np.nonzero(obj.mask)
        assert xs.min() == x0 and xs.max() + 1 == x1 and ys.min() == y0 and ys.max() + 1 == y1
        visible = obj.mask & ~covered_later
        if visible.any():
            assert np.all(lab[visible] == obj.class_id), f'{obj.name} #{obj.order} mislabeled'
            checked += 1
        covered_later |= obj.mask
    # the first object (sky) covers the whole frame, so every pixel is explained by some object
    assert covered_later.all()
    assert not (lab == IGNORE_ID).any()
    assert checked > 10


def test_all_scene_classes_appear_across_a_few_seeds() -> None:
    seen: set[int] = set()
    for seed in range(12):
        _, lab = generate_scene(seed, 128, 256)
        seen |= set(np.unique(lab).tolist())
    assert seen == set(SCENE_CLASSES), sorted(set(SCENE_CLASSES) ^ seen)


def test_color_cues_depend_on_channel_order() -> None:
    """Sky is blue and vegetation green in RGB; a BGR mix-up makes the sky red-dominant (the model must notice)."""
    margins = []
    for seed in range(8):
        rgb, lab = generate_scene(seed, 128, 256)
        sky = rgb[lab == SKY].astype(np.float64).mean(0)
        margins.append(sky[2] - sky[0])
        assert sky[2] > sky[0], f'seed {seed}: sky is not bluer than red: {sky}'
        if (lab == VEGETATION).any():
            veg = rgb[lab == VEGETATION].astype(np.float64).mean(0)
            assert veg[1] > veg[2], f'seed {seed}: vegetation is not greener than blue: {veg}'
    assert np.mean(margins) > 40


def test_fixed_camera_puts_horizon_where_asked() -> None:
    cam = CameraModel(focal_frac=0.8, horizon_frac=0.45, height_m=1.5)
    _, lab = generate_scene(5, 128, 256, cam)
    rows_with_sky = np.nonzero((lab == SKY).any(1))[0]
    assert rows_with_sky.max() <= int(0.45 * 128) + 1
    assert cam.pitch_deg(128, 256) > 0   # horizon above the image center: camera pitched down


def test_bad_size_is_a_typed_error() -> None:
    with pytest.raises(ConfigError, match='scene size'):
        generate_scene(0, 0, 256)


def test_bag_writer_round_trip(tmp_path) -> None:
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    from evit_ros.synthetic.bag import DEMO_CAMERA, DEMO_CAMERAS, frame_seed, write_synthetic

    ds = write_synthetic(tmp_path / 'syn', frames=3, seed=1, height=64, width=128)
    assert (tmp_path / 'syn' / 'index.json').exists()
    assert (tmp_path / 'syn' / 'images' / 'front' / '000002.png').exists()
    ts = get_typestore(Stores.ROS2_JAZZY)
    stamps: dict[str, list[int]] = {}
    with Reader(ds.bag) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        assert topics['/front/image_raw'] == 'sensor_msgs/msg/Image'
        assert topics['/rear/image_raw/compressed'] == 'sensor_msgs/msg/CompressedImage'
        assert topics['/front/labels'] == 'sensor_msgs/msg/Image'
        assert topics['/rear/camera_info'] == 'sensor_msgs/msg/CameraInfo'
        first_front_label = None
        for conn, _t, raw in reader.messages():
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            stamps.setdefault(conn.topic, []).append(stamp)
            if conn.topic == '/front/labels' and first_front_label is None:
                first_front_label = np.asarray(msg.data).reshape(msg.height, msg.width)
                assert msg.encoding == 'mono8'
            if conn.topic == '/front/camera_info':
                fx = msg.k[0]
                assert fx == pytest.approx(0.8 * 128) and msg.k[2] == pytest.approx(64.0)
    assert stamps['/front/image_raw'] == stamps['/front/labels'] == stamps['/front/camera_info']
    assert stamps['/rear/image_raw/compressed'] == stamps['/rear/labels']
    assert len(stamps['/front/image_raw']) == 3
    assert np.diff(stamps['/front/image_raw']).tolist() == [100_000_000, 100_000_000]
    _, expected = generate_scene(frame_seed(1, DEMO_CAMERAS[0], 0), 64, 128, DEMO_CAMERA)
    assert np.array_equal(first_front_label, expected)
