"""``--save-predictions DIR``: predictions as label PNGs that other tools (cityscapesScripts, labelling tools) read.

Bags: ``DIR/<camera>/<stamp_ns>.png`` in the run's ``--label-format`` (trainIds, or labelIds). Cityscapes:
``DIR/<city>_<seq>_<frame>_pred_labelIds.png`` (labelIds, the format cityscapesScripts'
``evalPixelLevelSemanticLabeling`` and the benchmark server match by the ``city_seq_frame`` stem).
Every PNG is written under a temporary name and moved into place, so a killed run never leaves half a PNG.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from evit_ros.datasets import CITYSCAPES_LABEL_TO_TRAIN, IGNORE_ID
from evit_ros.errors import DataError

LEFT_SUFFIX = '_leftImg8bit'


def train_to_label_lut() -> np.ndarray:
    """trainId -> Cityscapes labelId (255 -> 0, 'unlabeled'), 256 entries."""
    lut = np.zeros(256, np.uint8)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[train_id] = label_id
    lut[IGNORE_ID] = 0
    return lut


def check_predictions_dir(path: str | Path) -> None:
    """Refuse a non-empty or unwritable folder before the model is loaded (nothing of the user's is overwritten)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise DataError(f'--save-predictions {p} is a file; give a folder (it is created)')
    if p.is_dir() and any(p.iterdir()):
        raise DataError(f'--save-predictions {p} is not empty; choose a new or empty folder')
    parent = p if p.is_dir() else p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise DataError(f'--save-predictions {p}: {parent} is not writable')


class PredictionWriter:
    """Writes one label PNG per scored image."""

    def __init__(self, root: str | Path, label_format: str = 'trainid') -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.labelid = label_format == 'labelid'
        self.lut = train_to_label_lut()
        self.written = 0

    def path_for(self, cam: str, stamp_ns: int, frame_id: str = '', cityscapes: bool = False) -> Path:
        if cityscapes:
            stem = frame_id[:-len(LEFT_SUFFIX)] if frame_id.endswith(LEFT_SUFFIX) else frame_id
            return self.root / f'{stem}_pred_labelIds.png'
        return self.root / cam / f'{stamp_ns}.png'

    def write(self, labels: np.ndarray, cam: str, stamp_ns: int, frame_id: str = '', cityscapes: bool = False) -> Path:
        import cv2
        path = self.path_for(cam, stamp_ns, frame_id, cityscapes)
        path.parent.mkdir(parents=True, exist_ok=True)
        img = self.lut[labels] if (self.labelid or cityscapes) else np.ascontiguousarray(labels, np.uint8)
        tmp = path.with_name(f'.{path.name}.tmp.png')
        if not cv2.imwrite(str(tmp), img):
            raise DataError(f'could not write {tmp}; check the --save-predictions folder')
        os.replace(tmp, path)
        self.written += 1
        return path
