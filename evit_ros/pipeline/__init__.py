"""ROS-free perception pipeline (numpy + OpenCV only): decode, preprocess, postprocess, drivable area,
ground projection and the :class:`Segmenter` that the node and the evaluator share."""
from __future__ import annotations

from evit_ros.pipeline.decode import FRAME_ERROR_REASONS, SUPPORTED_ENCODINGS, decode_compressed, decode_image
from evit_ros.pipeline.drivable import (
                                        ClassGroup,
                                        ClassGroups,
                                        RoiMask,
                                        class_counts,
                                        class_fractions,
                                        freespace_boundary,
                                        group_fraction,
)
from evit_ros.pipeline.ground import FREE, OCCUPIED, UNKNOWN, GroundProjector, camera_rotation, scale_intrinsics
from evit_ros.pipeline.postprocess import (
                                        Palette,
                                        labels_to_source,
                                        mask_padding,
                                        overlay,
                                        to_uint8_labels,
                                        upsample_nearest,
)
from evit_ros.pipeline.preprocess import Preprocessor, ResizePlan, make_plan, normalize_nchw
from evit_ros.pipeline.segmenter import FrameResult, GroupResult, Segmenter, logits_to_labels

__all__ = [
    'FRAME_ERROR_REASONS', 'SUPPORTED_ENCODINGS', 'decode_compressed', 'decode_image',
    'ClassGroup', 'ClassGroups', 'RoiMask', 'class_counts', 'class_fractions', 'freespace_boundary', 'group_fraction',
    'FREE', 'OCCUPIED', 'UNKNOWN', 'GroundProjector', 'camera_rotation', 'scale_intrinsics',
    'Palette', 'labels_to_source', 'mask_padding', 'overlay', 'to_uint8_labels', 'upsample_nearest',
    'Preprocessor', 'ResizePlan', 'make_plan', 'normalize_nchw',
    'FrameResult', 'GroupResult', 'Segmenter', 'logits_to_labels',
]
