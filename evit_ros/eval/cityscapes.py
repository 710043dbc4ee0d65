"""Cityscapes reader: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelIds.png``.

Labels are labelIds mapped to trainIds (the official protocol), images are read as RGB and never resized
here: the pipeline resizes to the model input and the prediction back to the camera (label) size.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from evit_ros.datasets import cityscapes_label_lut
from evit_ros.errors import DataError
from evit_ros.eval.bags import IMAGE, BagEvent

TOPIC = '/cityscapes/image'


def cityscapes_pairs(root: str | Path, split: str = 'val') -> list[tuple[Path, Path]]:
    """Sorted (image, labelIds) pairs; raises DataError naming the expected layout when nothing matches."""
    r = Path(root)
    img_dir = r / 'leftImg8bit' / split
    if not img_dir.is_dir():
        raise DataError(f'{img_dir} does not exist; --cityscapes expects DIR/leftImg8bit/{split}/<city>/*.png '
                        f'and DIR/gtFine/{split}/<city>/*_gtFine_labelIds.png')
    pairs = []
    for img in sorted(img_dir.rglob('*_leftImg8bit.png')):
        rel = img.relative_to(img_dir)
        lab = r / 'gtFine' / split / rel.parent / img.name.replace('_leftImg8bit.png', '_gtFine_labelIds.png')
        if not lab.is_file():
            raise DataError(f'label {lab} for {img} is missing; download gtFine_trainvaltest and unpack it in {r}')
        pairs.append((img, lab))
    if not pairs:
        raise DataError(f'no *_leftImg8bit.png under {img_dir}; check the --cityscapes directory and --split')
    return pairs


def iter_cityscapes(root: str | Path, split: str = 'val') -> Iterator[BagEvent]:
    """One image event per pair, carrying its trainId label; unreadable files become error events."""
    import cv2
    lut = np.asarray(cityscapes_label_lut(), dtype=np.uint8)
    for i, (img_path, lab_path) in enumerate(cityscapes_pairs(root, split)):
        t0 = time.perf_counter()
        bgr = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        decode_ms = (time.perf_counter() - t0) * 1000.0
        lab = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED)
        if bgr is None:
            yield BagEvent(TOPIC, IMAGE, i, error='corrupt', detail=str(img_path))
            continue
        if lab is None or lab.ndim != 2:
            yield BagEvent(TOPIC, IMAGE, i, data=np.ascontiguousarray(bgr[..., ::-1]), decode_ms=decode_ms,
                           frame_id=img_path.stem)
            continue
        yield BagEvent(TOPIC, IMAGE, i, data=np.ascontiguousarray(bgr[..., ::-1]), decode_ms=decode_ms,
                       frame_id=img_path.stem, label=lut[lab.astype(np.uint8)])
