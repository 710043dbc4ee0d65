"""Evaluation reports: ``report.json`` (all numbers), ``report.md`` (for humans) and PNG plots (matplotlib Agg)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.eval.runner import EvalState

PLOTS = ('per_class_iou.png', 'latency_hist.png', 'confusion_matrix.png', 'samples.png')


def build_report(state: EvalState, class_names: Sequence[str], groups: Sequence[tuple[str, Sequence[int]]],
                 meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict; IoUs are fractions in [0, 1], None where undefined."""
    summary = state.cm.summary(class_names, groups)
    counters = dict(sorted(state.counters.items()))
    bad = {k: v for k, v in counters.items() if k.startswith('bad_')}
    return {
        'meta': dict(meta or {}),
        'sources': state.sources,
        'interrupted': state.interrupted,
        'frames': counters.get('frames', 0),
        'frames_scored': counters.get('frames_scored', 0),
        'frames_without_gt': counters.get('frames_without_gt', 0),
        'labels_without_image': counters.get('labels_without_image', 0),
        'bad_data': bad,
        'counters': counters,
        'metrics': summary,
        'per_camera': {cam: {k: v for k, v in cm.summary(class_names, groups).items() if k != 'per_class'}
                       for cam, cm in sorted(state.per_camera.items())},
        'latency_ms': state.latency.summary(),
        'miou_protocol': ('confusion matrix summed over all frames; pixels with GT 255/ignore excluded; '
                          'miou_present = mean IoU over classes with union > 0 (the official nanmean); '
                          'miou_19 = mean over all classes with absent classes counted as 0'),
        'confusion_matrix': state.cm.matrix.tolist(),
    }


def _pct(v: float | None) -> str:
    return 'n/a' if v is None else f'{100.0 * v:.2f}'


def render_markdown(report: dict[str, Any]) -> str:
    m = report['metrics']
    lines = ['# evit-ros evaluation report', '']
    meta = report['meta']
    if meta:
        lines += [', '.join(f'{k}: `{v}`' for k, v in meta.items()), '']
    if report['interrupted']:
        lines += ['**Interrupted: partial results.**', '']
    lines += ['## Summary', '', '| metric | value |', '|---|---|',
              f'| frames processed | {report["frames"]} |',
              f'| frames with ground truth | {report["frames_scored"]} |',
              f'| frames without ground truth (latency only) | {report["frames_without_gt"]} |',
              f'| mIoU, classes present (official nanmean) | {_pct(m["miou_present"])} % '
              f'({m["classes_present"]}/{m["num_classes"]} classes) |',
              f'| mIoU, all {m["num_classes"]} classes (absent = 0) | {_pct(m["miou_19"])} % |',
              f'| pixel accuracy | {_pct(m["pixel_accuracy"])} % |']
    for g, v in m['groups'].items():
        lines.append(f'| IoU of group `{g}` | {_pct(v)} % |')
    lines += ['', '## Per-class IoU', '', '| id | class | IoU % | GT pixels |', '|---|---|---|---|']
    for c in m['per_class']:
        lines.append(f'| {c["id"]} | {c["name"]} | {_pct(c["iou"])} | {c["gt_pixels"]} |')
    if len(report['per_camera']) > 1:
        lines += ['', '## Per camera', '', '| camera | mIoU present % | pixel acc % |', '|---|---|---|']
        for cam, s in report['per_camera'].items():
            lines.append(f'| {cam} | {_pct(s["miou_present"])} | {_pct(s["pixel_accuracy"])} |')
    lines += ['', '## Latency (ms)', '', '| stage | count | mean | p50 | p90 | p99 | max |',
              '|---|---|---|---|---|---|---|']
    for st, s in report['latency_ms'].items():
        lines.append(f'| {st} | {s["count"]} | {s["mean"]} | {s["p50"]} | {s["p90"]} | {s["p99"]} | {s["max"]} |')
    lines += ['', '## Data problems', '']
    if report['bad_data'] or report['labels_without_image']:
        lines += ['| counter | count |', '|---|---|']
        for k, v in report['bad_data'].items():
            lines.append(f'| {k} | {v} |')
        if report['labels_without_image']:
            lines.append(f'| labels_without_image | {report["labels_without_image"]} |')
    else:
        lines.append('none')
    lines += ['', '## Protocol', '', report['miou_protocol'], '', 'Plots: ' + ', '.join(f'![]({p})' for p in PLOTS), '']
    return '\n'.join(lines)


def write_report(out_dir: str | Path, state: EvalState, class_names: Sequence[str],
                 groups: Sequence[tuple[str, Sequence[int]]], meta: dict[str, Any] | None = None,
                 plots: bool = True) -> dict[str, Any]:
    """Write report.json, report.md and the PNG plots into ``out_dir``; returns the report dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(state, class_names, groups, meta)
    (out / 'report.json').write_text(json.dumps(report, indent=2))
    (out / 'report.md').write_text(render_markdown(report))
    if plots:
        write_plots(out, state, report, class_names)
    return report


def write_plots(out: Path, state: EvalState, report: dict[str, Any], class_names: Sequence[str]) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    n = state.num_classes
    names = [class_names[i] if i < len(class_names) else str(i) for i in range(n)]
    iou = [c['iou'] for c in report['metrics']['per_class']]
    fig, ax = plt.subplots(figsize=(10, 4))
    vals = [100.0 * v if v is not None else 0.0 for v in iou]
    ax.bar(range(n), vals, color=['tab:blue' if v is not None else 'lightgray' for v in iou])
    ax.set_xticks(range(n), names, rotation=60, ha='right', fontsize=8)
    ax.set_ylabel('IoU %')
    ax.set_ylim(0, 100)
    ax.set_title(f'per-class IoU (mIoU present {_pct(report["metrics"]["miou_present"])} %; gray: absent)')
    fig.tight_layout()
    fig.savefig(out / 'per_class_iou.png', dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for stage in state.latency.stages:
        s = state.latency.samples(stage)
        if s.size:
            ax.hist(s, bins=40, alpha=0.5, label=stage)
    ax.set_xlabel('ms')
    ax.set_ylabel('frames')
    ax.set_title('latency per stage')
    if state.latency.stages:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / 'latency_hist.png', dpi=80)
    plt.close(fig)

    m = state.cm.matrix.astype(np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig, ax = plt.subplots(figsize=(8, 7))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap='viridis')
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel('prediction')
    ax.set_ylabel('ground truth')
    ax.set_title('confusion matrix (row-normalized)')
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out / 'confusion_matrix.png', dpi=80)
    plt.close(fig)

    samples = state.samples[:max(1, len(state.samples))]
    cols = min(4, max(1, len(samples)))
    rows_n = max(1, -(-len(samples) // cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 2.4 * rows_n), squeeze=False)
    for ax in axes.ravel():
        ax.axis('off')
    for ax, smp in zip(axes.ravel(), samples, strict=False):
        img = np.frombuffer(smp['rgb'], dtype=np.uint8).reshape(smp['shape'])
        ax.imshow(img)
        ax.set_title(f'{smp["camera"]} {smp["stamp_ns"]}', fontsize=7)
    fig.tight_layout()
    fig.savefig(out / 'samples.png', dpi=80)
    plt.close(fig)
