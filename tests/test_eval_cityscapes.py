"""The Cityscapes folder reader: layout, labelId -> trainId mapping, scoring through the runner."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from eval_support import red_factory

from evit_ros.errors import DataError
from evit_ros.eval.cityscapes import TOPIC, cityscapes_pairs, iter_cityscapes
from evit_ros.eval.runner import run_events
from evit_ros.eval.scoring import EvalSpec, EvalState


def _write(root, city: str, name: str, rgb: np.ndarray, label_ids: np.ndarray | None) -> None:
    (root / 'leftImg8bit' / 'val' / city).mkdir(parents=True, exist_ok=True)
    (root / 'gtFine' / 'val' / city).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / 'leftImg8bit' / 'val' / city / f'{name}_leftImg8bit.png'), rgb[..., ::-1])
    if label_ids is not None:
        cv2.imwrite(str(root / 'gtFine' / 'val' / city / f'{name}_gtFine_labelIds.png'), label_ids)


def test_cityscapes_layout_mapping_and_scores(tmp_path) -> None:
    rgb = np.zeros((16, 32, 3), np.uint8)
    rgb[..., 0] = 5                                # predicted road (trainId 0) everywhere
    rgb[:, 16:, 0] = 135                           # right half predicted car (trainId 13)
    lab = np.full((16, 32), 7, np.uint8)           # labelId 7 road
    lab[:, 16:] = 26                               # labelId 26 car
    lab[:4, :] = 1                                 # labelId 1 ego vehicle -> ignored
    lab[4:8, :8] = 26                              # car where road is predicted
    _write(tmp_path, 'bonn', 'bonn_000001_000019', rgb, lab)
    _write(tmp_path, 'aachen', 'aachen_000000_000019', rgb, lab)
    pairs = cityscapes_pairs(tmp_path)
    assert [p[0].parent.name for p in pairs] == ['aachen', 'bonn']
    ev = next(iter_cityscapes(tmp_path))
    assert ev.label is not None and set(np.unique(ev.label)) == {1, 7, 26}   # labelIds, as stored
    st = run_events(iter_cityscapes(tmp_path), EvalState(19), EvalSpec((TOPIC,), progress=False), red_factory(),
                    source='cs', label_format='labelid')   # the scorer maps them to trainIds
    # per image: valid 12 rows x 32; road gt = 12*16 - 32 = 160 all predicted road;
    # car gt = 12*16 + 32 = 224 of which 192 predicted car; pred road = 192, pred car = 192
    iou = st.cm.iou()
    assert iou[0] == pytest.approx(160 / (160 + 192 - 160))
    assert iou[13] == pytest.approx(192 / (224 + 192 - 192))
    assert st.counters['frames_scored'] == 2 and st.cm.matrix.sum() == 2 * 12 * 32


def test_cityscapes_missing_label_or_folder_raises(tmp_path) -> None:
    with pytest.raises(DataError, match='leftImg8bit'):
        cityscapes_pairs(tmp_path)
    _write(tmp_path, 'bonn', 'bonn_1', np.zeros((8, 8, 3), np.uint8), None)
    with pytest.raises(DataError, match='gtFine'):
        cityscapes_pairs(tmp_path)
