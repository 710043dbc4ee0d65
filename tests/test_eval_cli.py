"""``evit-ros eval`` end to end: real ONNX Runtime pipeline (b0, tiny size), bags written here, report files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from eval_support import export_tiny_onnx, write_bag

from evit_ros.cli.main import main

H, W = 64, 128
MODEL = 'efficientvit-seg-b0-cityscapes'
T0 = 1_700_000_000_000_000_000
IMG, LAB = '/front/image_raw', '/front/labels'


def test_cli_errors_are_reported_not_raised(tmp_path, capsys) -> None:
    assert main(['eval', '--report', str(tmp_path / 'r')]) == 1
    assert 'nothing to evaluate' in capsys.readouterr().err
    assert main(['eval', '--bag', str(tmp_path / 'missing'), '--image-topic', IMG, '--label-format', 'trainid',
                 '--jobs', '-1']) == 1
    assert '--jobs' in capsys.readouterr().err


@pytest.fixture(scope='module')
def onnx_path(tmp_path_factory) -> Path:
    return export_tiny_onnx(tmp_path_factory.mktemp('onnx') / 'b0.onnx', H, W)


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        img = np.zeros((H, W, 3), np.uint8)
        img[: H // 2] = rng.integers(0, 255, 3)
        img[H // 2:] = rng.integers(0, 255, (H - H // 2, W, 3))
        out.append(img)
    return out


def test_cli_real_onnxruntime_gt_equal_prediction_and_corrupted(tmp_path, onnx_path) -> None:
    from evit_ros.config import load_config
    from evit_ros.eval.runner import PipelineFactory
    cfg = load_config(None, overrides={'backend.type': 'onnxruntime', 'backend.onnx_path': str(onnx_path),
                                       'input.height': H, 'input.width': W, 'outputs.mask_resolution': 'camera'})
    seg = PipelineFactory(cfg)()
    frames = _frames(3)
    preds = [seg.process([f], want_color=False)[0].labels.copy() for f in frames]
    seg.backend.close()
    msgs = []
    for i, (f, p) in enumerate(zip(frames, preds, strict=True)):
        st = T0 + i * 100_000_000
        msgs += [{'topic': IMG, 'stamp': st, 'rgb': f},
                 {'topic': LAB, 'stamp': st, 'label': p}]
    bag = write_bag(tmp_path / 'bag', msgs)
    common = ['--image-topic', IMG, '--label-topic', LAB, '--backend', 'onnxruntime', '--onnx', str(onnx_path),
              '--height', str(H), '--width', str(W), '--no-progress']
    rep = tmp_path / 'rep'
    assert main(['eval', '--bag', str(bag), '--report', str(rep), '--out-bag', str(tmp_path / 'out'), *common]) == 0
    r = json.loads((rep / 'report.json').read_text())
    assert r['frames'] == 3 and r['frames_scored'] == 3
    assert r['metrics']['miou_present'] == 1.0 and r['metrics']['pixel_accuracy'] == 1.0
    assert set(r['latency_ms']) >= {'decode', 'preprocess', 'infer', 'postprocess', 'total'}
    for name in ('report.md', 'per_class_iou.png', 'latency_hist.png', 'confusion_matrix.png', 'samples.png'):
        assert (rep / name).stat().st_size > 200
    assert list((tmp_path / 'out').glob('*.mcap'))

    # corrupt: a rectangle of every label set to a class id the prediction does not use there
    bad = []
    inter, union = np.zeros(19), np.zeros(19)
    for i, (f, p) in enumerate(zip(frames, preds, strict=True)):
        g = p.copy()
        g[5:20, 10:40] = (p[5:20, 10:40].astype(np.int64) + 1) % 19
        st = T0 + i * 100_000_000
        bad += [{'topic': IMG, 'stamp': st, 'rgb': f}, {'topic': LAB, 'stamp': st, 'label': g}]
        for c in range(19):
            inter[c] += np.count_nonzero((g == c) & (p == c))
            union[c] += np.count_nonzero((g == c) | (p == c))
    bag2 = write_bag(tmp_path / 'bag2', bad, 'sqlite3')
    assert main(['eval', '--bag', str(bag2), '--report', str(tmp_path / 'rep2'), *common]) == 0
    r2 = json.loads((tmp_path / 'rep2' / 'report.json').read_text())
    got = [c['iou'] for c in r2['metrics']['per_class']]
    for c in range(19):
        if union[c]:
            assert got[c] == pytest.approx(inter[c] / union[c], abs=1e-6)
        else:
            assert got[c] is None


def test_onnx_gives_its_own_size_and_a_mismatch_names_evals_flags(tmp_path, onnx_path, capsys) -> None:
    frames = _frames(2)
    msgs = []
    for i, f in enumerate(frames):
        st = T0 + i * 100_000_000
        msgs += [{'topic': IMG, 'stamp': st, 'rgb': f},
                 {'topic': LAB, 'stamp': st, 'label': np.zeros((H, W), np.uint8)}]
    bag = write_bag(tmp_path / 'bag', msgs)
    common = ['eval', '--bag', str(bag), '--image-topic', IMG, '--label-topic', LAB, '--backend', 'onnxruntime',
              '--onnx', str(onnx_path), '--no-progress']
    # no --height/--width: the 64x128 graph's metadata gives the size (the default input is 512x1024)
    assert main([*common, '--report', str(tmp_path / 'rep')]) == 0, capsys.readouterr().err
    r = json.loads((tmp_path / 'rep' / 'report.json').read_text())
    assert r['frames_scored'] == 2 and r['meta']['input'] == f'{H}x{W}'
    assert main([*common, '--report', str(tmp_path / 'rep2'), '--height', '256']) == 1
    err = capsys.readouterr().err
    assert f'takes {H}x{W} frames' in err and '--height/--width' in err and 'input.height' not in err, err
