"""The report's plots read right: absent classes drawn as absent, one latency series per stage with its p50/p95,
a class-colour legend on the samples. Checked on the matplotlib figures the report really draws."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evit_ros.datasets import CITYSCAPES_CLASSES
from evit_ros.eval import report as report_mod
from evit_ros.eval.scoring import EvalState, default_palette


@pytest.fixture
def figures(monkeypatch) -> dict[str, Any]:
    """The figures write_plots saves, by file name (the real PNGs are written too)."""
    seen: dict[str, Any] = {}
    save = report_mod._save

    def keep(fig: Any, path: Path) -> None:
        seen[path.name] = fig
        save(fig, path)
    monkeypatch.setattr(report_mod, '_save', keep)
    monkeypatch.setattr('matplotlib.pyplot.close', lambda fig=None: None)   # keep them inspectable
    return seen


def _state(stage_ms: dict[str, list[float]]) -> EvalState:
    st = EvalState(19)
    gt = np.zeros((8, 16), np.uint8)          # road, sky and car present; every other class absent
    gt[:3] = 10
    gt[3:4, :4] = 13
    pred = gt.copy()
    pred[0, 0] = 0                            # one wrong pixel: sky IoU < 1
    st.cm.update(gt, pred)
    for stage, values in stage_ms.items():
        for v in values:
            st.latency.add(stage, v)
    pal = default_palette(19)
    st.samples.append({'camera': 'front', 'stamp_ns': 1, 'shape': [8, 16, 3], 'image': np.zeros((8, 16, 3), np.uint8)
                       .tobytes(), 'gt': pal[gt].tobytes(), 'pred': pal[pred].tobytes()})
    return st


def test_absent_classes_get_no_bar_and_a_label(tmp_path, figures) -> None:
    st = _state({'end_to_end': [50.0, 60.0]})
    report_mod.write_report(tmp_path, st, CITYSCAPES_CLASSES, [])
    ax = figures['per_class_iou.png'].axes[0]
    bars = [p for p in ax.patches if p.get_height() > 0]
    assert len(bars) == 3                                     # road, sky, car: the classes present
    assert sorted(round(b.get_x() + b.get_width() / 2) for b in bars) == [0, 10, 13]
    labels = [t.get_text() for t in ax.texts]
    assert labels.count('absent') == 16
    assert (tmp_path / 'per_class_iou.png').stat().st_size > 1000


def test_latency_plot_has_one_series_per_stage_with_p50_p95_and_log_x(tmp_path, figures) -> None:
    st = _state({'decode': [0.5, 0.6, 0.7], 'infer': [40.0, 45.0, 50.0], 'end_to_end': [80.0, 90.0, 200.0]})
    report_mod.write_report(tmp_path, st, CITYSCAPES_CLASSES, [])
    ax = figures['latency_hist.png'].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [t.split(':')[0] for t in legend] == ['decode', 'infer', 'end_to_end']
    assert all('p50' in t and 'p95' in t for t in legend)
    assert ax.get_xscale() == 'log'                          # 0.6 ms beside 90 ms: log x
    assert len(ax.lines) == 6                                 # a p50 and a p95 line per stage
    st = _state({'end_to_end': [80.0, 90.0, 100.0]})
    report_mod.write_report(tmp_path / 'one', st, CITYSCAPES_CLASSES, [])
    ax = figures['latency_hist.png'].axes[0]
    assert ax.get_xscale() == 'linear' and 'end_to_end' in ax.get_title()


def test_samples_have_a_legend_of_the_classes_they_show(tmp_path, figures) -> None:
    report_mod.write_report(tmp_path, _state({'end_to_end': [1.0]}), CITYSCAPES_CLASSES, [])
    legend = figures['samples.png'].legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ['road', 'sky', 'car']
