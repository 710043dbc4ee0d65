"""`eval --cityscapes --save-predictions` vs the official cityscapesScripts evaluation on the same predictions.

The PNGs we save are found by cityscapesScripts' own ``getPrediction`` (by the ``city_seq_frame`` stem) and
scored by its ``evaluateImgLists``: per-class IoU and the class average (its nanmean over the classes present)
must equal our report's.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from eval_support import export_tiny_onnx

from evit_ros.cli.main import main

H, W = 64, 128


def _dataset(root: Path) -> list[Path]:
    rng = np.random.default_rng(5)
    gts = []
    for city, idx in (('aachen', 0), ('aachen', 1), ('bonn', 0)):
        img_dir = root / 'leftImg8bit' / 'val' / city
        gt_dir = root / 'gtFine' / 'val' / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        stem = f'{city}_{idx:06d}_000019'
        img = rng.integers(0, 255, (48, 96, 3), dtype=np.uint8)
        img[24:] = (90, 70, 80)
        cv2.imwrite(str(img_dir / f'{stem}_leftImg8bit.png'), img)
        lab = np.full((48, 96), 7, np.uint8)                    # road
        lab[:12] = 23                                           # sky
        lab[12:24, :30] = 11                                    # building
        lab[12:24, 30:60] = 26                                  # car
        lab[:4, :8] = 1                                         # ego vehicle: ignored
        lab[40:, 80:] = 0                                       # unlabeled: ignored
        gt = gt_dir / f'{stem}_gtFine_labelIds.png'
        cv2.imwrite(str(gt), lab)
        gts.append(gt)
    return gts


def test_our_scores_equal_cityscapesscripts_on_our_saved_predictions(tmp_path) -> None:
    ev = pytest.importorskip('cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling')
    onnx = export_tiny_onnx(tmp_path / 'b0.onnx', H, W)
    gts = _dataset(tmp_path / 'cs')
    preds = tmp_path / 'preds'
    rc = main(['eval', '--cityscapes', str(tmp_path / 'cs'), '--save-predictions', str(preds), '--backend',
               'onnxruntime', '--onnx', str(onnx), '--height', str(H), '--width', str(W), '--report',
               str(tmp_path / 'rep'), '--no-progress'])
    ours = json.loads((tmp_path / 'rep' / 'report.json').read_text())
    assert rc == 0 and ours['frames_scored'] == 3

    args = ev.args
    args.predictionPath, args.predictionWalk = str(preds), None
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    pred_files = [ev.getPrediction(args, str(gt)) for gt in gts]
    assert all(Path(p).parent == preds for p in pred_files)
    result = ev.evaluateImgLists(pred_files, [str(g) for g in gts], args)
    theirs = result['classScores']
    for c in ours['metrics']['per_class']:
        t = theirs[c['name']]
        if c['iou'] is None:
            assert math.isnan(t), c['name']
        else:
            assert c['iou'] == pytest.approx(t, abs=1e-9), c['name']
    assert ours['metrics']['miou_present'] == pytest.approx(result['averageScoreClasses'], abs=1e-9)
