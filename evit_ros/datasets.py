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


# The 150 ADE20K SceneParsing classes (objectInfo150 order, i.e. png value - 1), as the official
# EfficientViT ADE20K models predict them.
ADE20K_CLASSES: tuple[str, ...] = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path',
    'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase',
    'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm',
    'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel', 'light',
    'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver', 'airplane',
    'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
    'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything', 'swimming pool', 'stool',
    'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank',
    'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture',
    'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor',
    'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag',
)


def _bit_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """Deterministic, pairwise-distinct colors: the PASCAL-VOC bit-interleaving colormap for ids 1..n.

    Bit b of the id goes to bit (7 - b // 3) of channel b % 3 (R, G, B), so every id < 2**24 gets its
    own color and id 0 (black) is never used.
    """
    colors = []
    for i in range(1, n + 1):
        rgb = [0, 0, 0]
        cid, shift = i, 7
        while cid:
            for ch in range(3):
                rgb[ch] |= ((cid >> ch) & 1) << shift
            cid >>= 3
            shift -= 1
        colors.append((rgb[0], rgb[1], rgb[2]))
    return tuple(colors)


# ADE20K colors (RGB) by class id: the VOC bit colormap of id + 1 (see _bit_palette).
ADE20K_COLORS: tuple[tuple[int, int, int], ...] = _bit_palette(len(ADE20K_CLASSES))


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
ADE20K = DatasetInfo('ade20k', ADE20K_CLASSES, ADE20K_COLORS)
DATASETS: dict[str, DatasetInfo] = {'cityscapes': CITYSCAPES, 'ade20k': ADE20K}


def dataset_for_model(model_name: str) -> DatasetInfo:
    """Dataset metadata for a zoo name such as ``efficientvit-seg-b0-cityscapes``."""
    from evit_ros.errors import ModelError
    suffix = model_name.rsplit('-', 1)[-1]
    if suffix not in DATASETS:
        raise ModelError(f'model {model_name!r}: no dataset metadata for {suffix!r}; known: {", ".join(DATASETS)}')
    return DATASETS[suffix]
