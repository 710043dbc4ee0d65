"""``python -m evit_ros.bench.uncertainty``: the uncertainty signal's separation, printed and written as JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip('onnxruntime')
pytest.importorskip('torch')

from evit_ros.bench.uncertainty import auroc, main  # noqa: E402


def test_auroc_counts_known_above_unknown_and_ties_half() -> None:
    assert auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auroc(np.array([0.1]), np.array([0.9])) == 0.0
    assert auroc(np.array([0.5]), np.array([0.5])) == 0.5


def test_bench_prints_a_table_and_writes_json_per_set(tmp_path, capsys) -> None:
    out = tmp_path / 'u.json'
    assert main(['--height', '64', '--width', '128', '--frames', '3', '--threads', '1', '--json', str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report['sets']) == {'heldout', 'noise', 'inverted', 'blurred', 'dark', 'covered'}
    for name, entry in report['sets'].items():
        assert 0.0 < entry['mean_confidence'] <= 1.0 and 0.0 <= entry['low_fraction'] <= 1.0
        assert ('auroc_vs_heldout' in entry) == (name != 'heldout')
    text = capsys.readouterr().out
    assert 'heldout' in text and 'AUROC' in text and f'wrote {out}' in text


def test_bench_refuses_bad_arguments_with_the_fix(capsys) -> None:
    assert main(['--frames', '1']) == 2
    assert 'frames >= 2' in capsys.readouterr().err
