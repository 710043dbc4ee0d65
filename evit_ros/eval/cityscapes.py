"""Cityscapes reader: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelIds.png``.

Labels are labelIds mapped to trainIds (the official protocol), images are read as RGB and never resized
here: the pipeline resizes to the model input and the prediction back to the camera (label) size.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from evit_ros.datasets import cityscapes_label_lut
from evit_ros.errors import ConfigError, DataError
from evit_ros.eval.bags import IMAGE, BagEvent

TOPIC = '/cityscapes/image'
DATASET_ENV = 'CITYSCAPES_DATASET'   # cityscapesScripts' variable for the dataset root
LOG = logging.getLogger('evit_ros.eval')


def dataset_root(folder: str = '') -> Path:
    """``folder``, else ``$CITYSCAPES_DATASET``; a ConfigError says how to give one."""
    root = folder or os.environ.get(DATASET_ENV, '')
    if not root:
        raise ConfigError(f'--cityscapes needs a folder: pass --cityscapes DIR or set {DATASET_ENV} '
                          '(the folder holding leftImg8bit/ and gtFine/, or the unzipped *_trainvaltest/ folders)')
    return Path(root).expanduser()


def _find(root: Path, kind: str, split: str) -> Path | None:
    """``root/<kind>/<split>`` or the unzipped archive layout ``root/<kind>_trainvaltest/<kind>/<split>``."""
    for cand in (root / kind / split, root / f'{kind}_trainvaltest' / kind / split):
        if cand.is_dir():
            return cand
    return None


def cityscapes_pairs(root: str | Path, split: str = 'val') -> list[tuple[Path, Path]]:
    """Sorted (image, labelIds) pairs; raises DataError naming the expected layout when nothing matches.

    Accepts the official layout (``leftImg8bit/<split>``, ``gtFine/<split>``) and the unzipped archives
    (``leftImg8bit_trainvaltest/leftImg8bit/<split>``, ``gtFine_trainvaltest/gtFine/<split>``).
    Called before the model is loaded, so a wrong folder fails in a second.
    """
    r = Path(root)
    layout = (f'DIR/leftImg8bit/{split}/<city>/*_leftImg8bit.png and DIR/gtFine/{split}/<city>/'
              f'*_gtFine_labelIds.png (or the unzipped leftImg8bit_trainvaltest/ and gtFine_trainvaltest/)')
    if not r.is_dir():
        raise DataError(f'Cityscapes folder {r} does not exist; --cityscapes expects {layout}')
    img_dir = _find(r, 'leftImg8bit', split)
    if img_dir is None:
        raise DataError(f'no leftImg8bit/{split} under {r}; --cityscapes expects {layout}')
    gt_dir = _find(r, 'gtFine', split)
    if gt_dir is None:
        raise DataError(f'no gtFine/{split} under {r}; download gtFine_trainvaltest.zip and unzip it in {r} '
                        f'(expected {layout})')
    if split == 'test':
        LOG.warning('the Cityscapes test split has no public labels (its gtFine files are all void): nothing can '
                    'be scored; evaluate --split val, or submit --save-predictions to the benchmark server')
    pairs = []
    for img in sorted(img_dir.rglob('*_leftImg8bit.png')):
        rel = img.relative_to(img_dir)
        lab = gt_dir / rel.parent / img.name.replace('_leftImg8bit.png', '_gtFine_labelIds.png')
        if not lab.is_file():
            raise DataError(f'label {lab} for {img} is missing; download gtFine_trainvaltest and unpack it in {r}')
        pairs.append((img, lab))
    if not pairs:
        raise DataError(f'no *_leftImg8bit.png under {img_dir}; check the --cityscapes directory and --split')
    return pairs


def iter_cityscapes(root: str | Path, split: str = 'val',
                    pairs: list[tuple[Path, Path]] | None = None) -> Iterator[BagEvent]:
    """One image event per pair, carrying its trainId label; unreadable files become error events."""
    import cv2
    lut = np.asarray(cityscapes_label_lut(), dtype=np.uint8)
    for i, (img_path, lab_path) in enumerate(pairs if pairs is not None else cityscapes_pairs(root, split)):
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
