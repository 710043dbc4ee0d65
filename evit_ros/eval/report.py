"""Evaluation reports: ``report.json`` (all numbers), ``report.md`` (for humans) and PNG plots (matplotlib Agg)."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.errors import DataError
from evit_ros.eval.scoring import EvalState, default_palette
from evit_ros.fileio import replace_atomically

PLOTS = ('per_class_iou.png', 'latency_hist.png', 'confusion_matrix.png', 'samples.png')


def check_report_dir(path: str | Path) -> None:
    """Refuse a report path that cannot be a folder before any work is done (not after a whole run)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise DataError(f'--report {p} is an existing file; give a folder for report.md, report.json and the plots')
    parent = p
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.is_file() or not os.access(parent, os.W_OK):
        raise DataError(f'--report {p}: {parent} is not a writable folder')


def frame_accounts(counters: dict[str, int], mode: str = 'offline') -> dict[str, Any]:
    """The frame counts and whether they add up; checked here, where the report is made.

    Images (offline): ``frames = frames_scored + frames_without_gt + frames_bad_gt + duplicate_image_stamps``.
    Label messages (label topics): ``labels = frames_scored + frames_bad_gt + labels_without_image +
    duplicate_label_stamps``, and no label paired twice. ``ok`` is False when either does not hold.
    """
    c = counters
    parts = ('frames_scored', 'frames_without_gt', 'frames_bad_gt', 'duplicate_image_stamps')
    images = {'frames': c.get('frames', 0), **{k: c.get(k, 0) for k in parts}}
    out: dict[str, Any] = {'images': images, 'ok': True, 'problem': None}
    if mode != 'live' and images['frames'] != sum(images[k] for k in parts):
        out['ok'] = False
        out['problem'] = (f'{images["frames"]} frames processed but {" + ".join(str(images[k]) for k in parts)} '
                          f'accounted ({", ".join(parts)})')
    if 'labels' in c:
        lparts = ('frames_scored', 'frames_bad_gt', 'labels_without_image', 'duplicate_label_stamps')
        labels = {'labels': c['labels'], **{k: c.get(k, 0) for k in lparts},
                  'labels_paired_twice': c.get('labels_paired_twice', 0)}
        out['labels'] = labels
        if labels['labels_paired_twice'] or labels['labels'] != sum(labels[k] for k in lparts):
            out['ok'] = False
            out['problem'] = (f'{labels["labels"]} label messages but {" + ".join(str(labels[k]) for k in lparts)} '
                              f'accounted ({", ".join(lparts)}), {labels["labels_paired_twice"]} paired twice')
    return out


def build_report(state: EvalState, class_names: Sequence[str], groups: Sequence[tuple[str, Sequence[int]]],
                 meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict; IoUs are fractions in [0, 1], None where undefined.

    ``error`` is None, or one line saying why nothing was scored (set by the caller, see ``eval.verdict``).
    """
    summary = state.cm.summary(class_names, groups)
    counters = dict(sorted(state.counters.items()))
    bad = {k: v for k, v in counters.items() if k.startswith('bad_')}
    meta = dict(meta or {})
    return {
        'meta': meta,
        'mode': meta.get('mode', 'offline'),
        'error': None,
        'sources': state.sources,
        'failed_sources': dict(state.failed_sources),
        'shards': state.shards,
        'interrupted': state.interrupted,
        'frames': counters.get('frames', 0),
        'frames_scored': counters.get('frames_scored', 0),
        'frames_without_gt': counters.get('frames_without_gt', 0),
        'frames_bad_gt': counters.get('frames_bad_gt', 0),
        'labels_without_image': counters.get('labels_without_image', 0),
        'duplicate_stamps': counters.get('duplicate_stamps', 0),
        'dropped': counters.get('dropped', 0),
        'accounting': frame_accounts(counters, meta.get('mode', 'offline')),
        'bad_data': bad,
        'counters': counters,
        'metrics': summary,
        'per_camera': {cam: {k: v for k, v in cm.summary(class_names, groups).items() if k != 'per_class'}
                       for cam, cm in sorted(state.per_camera.items())},
        'latency_ms': state.latency.summary(),
        'miou_protocol': ('confusion matrix summed over all frames; pixels with GT 255/ignore excluded; '
                          'miou_present = mean IoU over the classes present, i.e. with ground-truth or predicted '
                          'pixels (union > 0; cityscapesScripts\' rule, its nanmean); '
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
    if report.get('error'):
        lines += [f'**Nothing was scored: {report["error"]}.** The metrics below are empty.', '']
    if report.get('partial'):
        lines += [f'**The score is not trustworthy: {report["partial"]}.**', '']
    if report['interrupted']:
        lines += ['**Interrupted: partial results.**', '']
    if report.get('failed_sources'):
        lines += ['**Sources that could not be read (not evaluated):**', '']
        lines += [f'- `{src}`: {why}' for src, why in report['failed_sources'].items()] + ['']
    lines += ['## Summary', '', '| metric | value |', '|---|---|',
              f'| frames processed | {report["frames"]} |',
              f'| frames with ground truth | {report["frames_scored"]} |',
              f'| frames without ground truth (latency only) | {report["frames_without_gt"]} |',
              f'| frames whose ground truth was unusable (bad_label_*) | {report.get("frames_bad_gt", 0)} |',
              f'| images and labels with a repeated stamp (not paired) | {report.get("duplicate_stamps", 0)} |',
              *([f'| frames dropped by the node (no mask) | {report["dropped"]} |']
                if report.get('mode') == 'live' else []),
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
    lines += _shard_lines(report.get('shards') or {})
    lines += ['', '## Protocol', '', report['miou_protocol'], '', 'Plots: ' + ', '.join(f'![]({p})' for p in PLOTS), '']
    return '\n'.join(lines)


def _shard_lines(sh: dict[str, Any]) -> list[str]:
    if not sh:
        return []
    lines = ['', '## Shards', '', f'executor `{sh.get("executor", "local")}`: {sh.get("done", 0)} of '
             f'{sh.get("total", 0)} shards evaluated, {sh.get("retried", 0)} retries, '
             f'{len(sh.get("failed", []))} failed, {len(sh.get("not_run", []))} not run (interrupted)', '']
    if sh.get('failed'):
        lines += ['| failed shard (not in the numbers above) | attempts | error |', '|---|---|---|']
        for f in sh['failed']:
            lines.append(f'| {f["shard"]} | {f["attempts"]} | {str(f["error"]).replace("|", "/")} |')
    if sh.get('not_run'):
        lines += ['', 'not run: ' + ', '.join(sh['not_run'])]
    if sh.get('same_bag_given_twice'):
        lines += ['', *(f'- {line}' for line in sh['same_bag_given_twice'])]
    if sh.get('out_bags'):
        lines += ['', 'output bags: ' + ', '.join(f'`{b}`' for b in sh['out_bags'])]
    return lines


def write_report(out_dir: str | Path, state: EvalState, class_names: Sequence[str],
                 groups: Sequence[tuple[str, Sequence[int]]], meta: dict[str, Any] | None = None,
                 plots: bool = True, error: str | None = None,
                 report: dict[str, Any] | None = None, partial: str | None = None) -> dict[str, Any]:
    """Write report.json, report.md and the PNG plots into ``out_dir``; returns the report dict.

    ``report``: :func:`build_report`'s dict when the caller already built it (``meta`` is then not used).
    ``error``: why nothing was scored; then no accuracy number is written (null), never 0. ``partial``: why
    the score that was computed cannot be trusted (said in report.md and the JSON, beside the numbers).
    Every file is written under a temporary name and moved into place: a reader sees a whole file or none.
    """
    check_report_dir(out_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if report is None:
        report = build_report(state, class_names, groups, meta)
    report['error'] = error
    report['partial'] = partial
    if error:   # nothing scored: an mIoU of 0 would read as a (terrible) score
        m = report['metrics']
        for key in ('miou_present', 'miou_19', 'pixel_accuracy'):
            m[key] = None
        m['groups'] = {g: None for g in m.get('groups', {})}
        for cam in report.get('per_camera', {}).values():
            for key in ('miou_present', 'miou_19', 'pixel_accuracy'):
                cam[key] = None
    if plots:
        write_plots(out, state, report, class_names)
    replace_atomically(out / 'report.md', render_markdown(report).encode())
    replace_atomically(out / 'report.json', json.dumps(report, indent=2).encode())
    return report


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(f'.{path.name}.tmp.png')
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, path)


def write_plots(out: Path, state: EvalState, report: dict[str, Any], class_names: Sequence[str]) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    n = state.num_classes
    names = [class_names[i] if i < len(class_names) else str(i) for i in range(n)]
    iou = [c['iou'] for c in report['metrics']['per_class']]
    fig, ax = plt.subplots(figsize=(10, 4))
    present = [i for i, v in enumerate(iou) if v is not None]
    absent = [i for i, v in enumerate(iou) if v is None]
    ax.bar(present, [100.0 * iou[i] for i in present], color='tab:blue', label='IoU of a class present')
    if absent:   # no bar (a bar reads as a value): a gray cross on the axis and the word "absent" above it
        ax.plot(absent, [0.0] * len(absent), linestyle='none', marker='x', color='gray', clip_on=False,
                label='absent: no ground-truth or predicted pixel (not scored)')
        for i in absent:
            ax.text(i, 2.0, 'absent', rotation=90, ha='center', va='bottom', fontsize=7, color='gray')
    ax.set_xticks(range(n), names, rotation=60, ha='right', fontsize=8)
    ax.set_ylabel('IoU %')
    ax.set_ylim(0, 118)                      # room for the legend above the 100 % bars
    ax.set_yticks(range(0, 101, 20))
    ax.legend(fontsize=8, loc='upper center', ncol=2, frameon=False)
    ax.set_title(f'per-class IoU (mIoU over the classes present {_pct(report["metrics"]["miou_present"])} %)')
    fig.tight_layout()
    _save(fig, out / 'per_class_iou.png')
    plt.close(fig)

    _latency_plot(plt, out / 'latency_hist.png', state)
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
    _save(fig, out / 'confusion_matrix.png')
    plt.close(fig)

    _write_samples(out / 'samples.png', state.samples, names, default_palette(n))


LOG_X_RATIO = 10.0   # the latency plot uses a log x axis when the stages' p50s differ by more than this factor


def _latency_plot(plt: Any, path: Path, state: EvalState) -> None:
    """One step histogram per stage, with its p50 (solid) and p95 (dashed) marked in the stage's colour.

    Stages that differ by orders of magnitude (decode ~1 ms beside end to end ~100 ms) share a log x axis, so the
    small ones do not hide in one bar near 0.
    """
    lat = state.latency
    stages = [st for st in lat.stages if lat.count(st)]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if not stages:
        ax.text(0.5, 0.5, 'no latency recorded (no frame was processed)', ha='center', va='center')
        ax.axis('off')
    else:
        p50s = [max(lat.percentile(st, 50), 1e-3) for st in stages]
        log_x = max(p50s) / min(p50s) > LOG_X_RATIO
        lo = max(min(lat.percentile(st, 0) for st in stages), 1e-3)
        hi = max(lat.percentile(st, 100) for st in stages)
        edges = np.geomspace(lo, max(hi, lo * 1.01), 60) if log_x else np.linspace(0.0, max(hi, 1e-3), 60)
        for k, st in enumerate(stages):
            mids, counts = lat.histogram(st)
            color = f'C{k % 10}'
            p50, p95 = lat.percentile(st, 50), lat.percentile(st, 95)
            ax.hist(np.clip(mids, edges[0], edges[-1]), bins=edges, weights=counts, histtype='step', linewidth=1.5,
                    color=color, label=f'{st}: p50 {p50:.1f}, p95 {p95:.1f} ms (n={lat.count(st)})')
            ax.axvline(p50, color=color, linestyle='-', linewidth=1)
            ax.axvline(p95, color=color, linestyle='--', linewidth=1)
        if log_x:
            ax.set_xscale('log')
        ax.set_xlabel('ms' + (' (log scale)' if log_x else ''))
        ax.set_ylabel('frames')
        ax.legend(fontsize=7, loc='upper right')
        ax.set_title('latency per stage: p50 solid, p95 dashed' if len(stages) > 1
                     else f'latency ({stages[0]}): p50 solid, p95 dashed')
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def sample_strip(smp: dict[str, Any]) -> np.ndarray:
    """One sample as image | ground truth | prediction, side by side (gray where there is no ground truth)."""
    h, w = smp['shape'][:2]
    panels = []
    for key in ('image', 'gt', 'pred'):
        raw = smp.get(key)
        panels.append(np.frombuffer(raw, np.uint8).reshape(h, w, 3) if raw else np.full((h, w, 3), 128, np.uint8))
    gap = np.full((h, 4, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)


def sample_classes(samples: Sequence[dict[str, Any]], palette: np.ndarray, n: int) -> list[int]:
    """Class ids whose colour appears in the samples' ground truth or prediction panels (for the legend)."""
    seen: set[tuple[int, int, int]] = set()
    for smp in samples:
        for key in ('gt', 'pred'):
            if smp.get(key):
                px = np.frombuffer(smp[key], np.uint8).reshape(-1, 3)
                seen.update(map(tuple, np.unique(px, axis=0).tolist()))
    return [i for i in range(n) if tuple(int(v) for v in palette[i]) in seen]


def _write_samples(path: Path, samples: Sequence[dict[str, Any]], names: Sequence[str], palette: np.ndarray
                   ) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    shown = [s for s in samples if s.get('image')]
    rows_n = max(1, len(shown))
    fig, axes = plt.subplots(rows_n, 1, figsize=(9, 2.2 * rows_n + 0.8), squeeze=False)
    for ax in axes.ravel():
        ax.axis('off')
    if not shown:
        axes[0, 0].text(0.5, 0.5, 'no samples (no frame was processed)', ha='center', va='center')
    for ax, smp in zip(axes.ravel(), shown, strict=False):
        ax.imshow(sample_strip(smp))
        gt = '' if smp.get('gt') else ' (no ground truth)'
        ax.set_title(f'{smp["camera"]} {smp["stamp_ns"]}: image | ground truth{gt} | prediction', fontsize=8)
    if names:   # the class colours, for the classes the panels show
        ids = sample_classes(shown, palette, len(names))
        handles = [Patch(facecolor=palette[i] / 255.0, edgecolor='black', linewidth=0.5, label=names[i]) for i in ids]
        if handles:
            fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), 7), fontsize=7, frameon=False)
    legend_h = 0.7 / (2.2 * rows_n + 0.8) if names else 0.0   # ~0.7 inch for 3 rows
    fig.tight_layout(rect=(0, legend_h, 1, 1))
    _save(fig, path)
    plt.close(fig)
