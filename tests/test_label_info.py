"""vision_msgs/LabelInfo for Nav2's semantic_segmentation_layer, built against a stand-in type.

No vision_msgs wheel exists on PyPI, so the stand-in below mirrors vision_msgs/msg/LabelInfo.msg and
VisionClass.msg field for field (``std_msgs/Header header``, ``VisionClass[] class_map``, ``float32 threshold``;
``uint16 class_id``, ``string class_name``) and refuses unknown fields and out-of-range values the way rosidl
message classes do. On a ROS install with vision_msgs the node passes the real classes to the same function.
"""
from __future__ import annotations

import pytest

pytest.importorskip('std_msgs')

from std_msgs.msg import Header  # noqa: E402

from evit_ros.datasets import dataset_for_model  # noqa: E402
from evit_ros.ros.conversions import UNLABELED_ID, label_info  # noqa: E402


class VisionClass:
    __slots__ = ('class_id', 'class_name')

    def __init__(self, class_id: int = 0, class_name: str = '') -> None:
        if not isinstance(class_id, int) or not 0 <= class_id <= 65535:
            raise AssertionError(f'class_id {class_id!r} is not a uint16')
        if not isinstance(class_name, str):
            raise AssertionError('class_name must be a str')
        self.class_id, self.class_name = class_id, class_name


class LabelInfo:
    __slots__ = ('header', 'class_map', 'threshold')

    def __init__(self) -> None:
        self.header = Header()
        self.class_map: list[VisionClass] = []
        self.threshold = 0.0


def test_label_info_maps_train_ids_to_cityscapes_names_and_255_to_unlabeled() -> None:
    from builtin_interfaces.msg import Time
    names = dataset_for_model('efficientvit-seg-b0-cityscapes').class_names
    msg = label_info(LabelInfo, VisionClass, names, stamp=Time(sec=7), frame_id='front')
    assert isinstance(msg, LabelInfo) and msg.header.stamp.sec == 7 and msg.header.frame_id == 'front'
    ids = [c.class_id for c in msg.class_map]
    assert ids == [*range(19), 255]
    by_id = {c.class_id: c.class_name for c in msg.class_map}
    assert by_id[0] == 'road' and by_id[1] == 'sidewalk' and by_id[13] == 'car' and by_id[18] == 'bicycle'
    assert by_id[UNLABELED_ID] == 'unlabeled'
    assert list(by_id.values())[:19] == list(names)
    assert msg.threshold == 0.0   # argmax masks: no confidence threshold applied


def test_label_info_refuses_class_lists_a_mono8_mask_cannot_carry() -> None:
    with pytest.raises(ValueError, match='mono8'):
        label_info(LabelInfo, VisionClass, [f'c{i}' for i in range(255)])
    with pytest.raises(ValueError):
        label_info(LabelInfo, VisionClass, [])
