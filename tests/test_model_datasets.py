"""Dataset metadata the zoo models predict: ADE20K's 150 classes and palette, per-model class counts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from evit_ros import datasets
from tests.model_support import official_specs


def test_ade20k_classes_and_palette():
    ade = datasets.DATASETS['ade20k']
    assert ade.num_classes == 150 == len(set(ade.class_names))
    assert ade.class_names[:4] == ('wall', 'building', 'sky', 'floor')
    assert ade.class_names[-3:] == ('glass', 'clock', 'flag')
    assert ade.class_id('chest_of_drawers') == 44 and ade.class_id('Traffic Light') == 136
    assert len(ade.colors) == 150 == len(set(ade.colors))
    assert (0, 0, 0) not in ade.colors
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in ade.colors)
    assert ade.colors[:3] == ((128, 0, 0), (0, 128, 0), (128, 128, 0))  # VOC bit colormap of ids 1..3


def test_every_zoo_model_has_matching_metadata():
    for name, spec in official_specs().items():
        assert datasets.dataset_for_model(name).num_classes == spec['n_classes']


def test_datasets_import_without_torch():
    code = 'import sys, evit_ros.datasets; sys.exit(1 if "torch" in sys.modules else 0)'
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, 'PYTHONPATH': repo}
    assert subprocess.run([sys.executable, '-c', code], check=False, env=env, cwd=repo).returncode == 0
