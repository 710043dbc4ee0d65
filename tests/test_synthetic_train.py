"""Training helpers: the held-out metric, and a two-step run that writes a strictly loadable checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest

from evit_ros.errors import ConfigError
from evit_ros.synthetic.train import TrainConfig, class_weights, confusion, iou_from_confusion


def test_iou_over_present_classes() -> None:
    gt = np.array([[0, 0, 1, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 7]], np.uint8)
    cm = confusion(pred, gt, 19)
    assert cm.sum() == 3   # the ignore pixel is not counted
    miou, per = iou_from_confusion(cm)
    assert per == {'road': 0.5, 'sidewalk': 0.5}
    assert miou == 0.5


def test_class_weights_favour_rare_classes() -> None:
    w = class_weights(64, 128, scenes=4)
    assert w[0] < w[6]          # road is common, traffic lights are rare
    assert np.all(class_weights(64, 128, scenes=2, power=0.0) == 1.0)


def test_bad_training_size_is_a_typed_error() -> None:
    with pytest.raises(ConfigError, match='multiples of 32'):
        TrainConfig(out='x.pt', height=100)


def test_two_training_steps_write_a_strictly_loadable_checkpoint(tmp_path) -> None:
    torch = pytest.importorskip('torch')
    try:
        from evit_ros.model import create_model
    except ImportError:
        pytest.skip('the model zoo (evit_ros.model.create_model) has not landed')
    from evit_ros.synthetic.train import MODEL_NAME, train

    out = tmp_path / 'tiny.pt'
    cfg = TrainConfig(out=str(out), steps=2, batch=2, height=64, width=128, threads=1, eval_every=2,
                      eval_scenes=1, log=str(tmp_path / 'log.jsonl'))
    result = train(cfg)
    assert result['final']['step'] == 2
    ckpt = torch.load(out, map_location='cpu', weights_only=True)
    assert ckpt['meta']['steps_done'] == 2
    create_model(MODEL_NAME, checkpoint=str(out))   # strict load
    lines = [json.loads(x) for x in (tmp_path / 'log.jsonl').read_text().splitlines()]
    assert any('loss' in x for x in lines) and any('heldout_miou' in x for x in lines)
