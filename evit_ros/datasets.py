"""Dataset metadata as data: class names, colors and label-id tables (pure Python, no torch/ROS).

Masks published by evit_ros use Cityscapes *trainIds* 0..18 and 255 for ignore/unlabeled.
"""
from __future__ import annotations

from dataclasses import dataclass

IGNORE_ID = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
    'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle',
    'bicycle',
)

# The standard Cityscapes colors (RGB), indexed by trainId.
CITYSCAPES_COLORS: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

# Cityscapes labelId (0..33) -> trainId; every id not listed is ignored (255).
CITYSCAPES_LABEL_TO_TRAIN: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


def cityscapes_label_lut() -> list[int]:
    """256-entry lookup table labelId -> trainId (255 for ignored ids), usable with ``np.take``."""
    lut = [IGNORE_ID] * 256
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_id(self, name: str) -> int:
        """Class id of a class name (case-insensitive; '_' may stand for ' ')."""
        key = name.strip().lower().replace('_', ' ')
        for i, n in enumerate(self.class_names):
            if n == key:
                return i
        from evit_ros.errors import ConfigError
        raise ConfigError(f'unknown {self.name} class {name!r}; valid classes: {", ".join(self.class_names)}')


CITYSCAPES = DatasetInfo('cityscapes', CITYSCAPES_CLASSES, CITYSCAPES_COLORS)
DATASETS: dict[str, DatasetInfo] = {'cityscapes': CITYSCAPES}


def dataset_for_model(model_name: str) -> DatasetInfo:
    """Dataset metadata for a zoo name such as ``efficientvit-seg-b0-cityscapes``."""
    from evit_ros.errors import ModelError
    suffix = model_name.rsplit('-', 1)[-1]
    if suffix not in DATASETS:
        raise ModelError(f'model {model_name!r}: no dataset metadata for {suffix!r}; known: {", ".join(DATASETS)}')
    return DATASETS[suffix]
