"""How well the node's uncertainty signal separates known scenes from unknown ones:
``python -m evit_ros.bench.uncertainty``.

The signal (``confidence.mean`` and ``confidence.low_fraction`` in each camera's diagnostics) is the mean max
softmax probability of a frame at the 1/8 logits, and the fraction of its pixels below
``diagnostics.low_confidence_threshold``. This runs the node's own path (the cached ``labels+logits`` export
in ONNX Runtime, :meth:`~evit_ros.pipeline.Segmenter.run_labels` with a confidence threshold) on held-out
synthetic scenes (seeds the demo weights never trained on) and on frames the model has not seen the like of:
uniform noise, the held-out scenes inverted, blurred, darkened (night) and covered (a lens under mud). For each
set it reports the per-frame mean confidence (mean, p5, p95) and low fraction, and per unknown set the AUROC of
"known scores higher than unknown" and the share of its frames below ``--min-mean`` (the WARN threshold) next
to the share of held-out frames below it (false alarms). Prints a table and writes JSON (``--json``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from evit_ros.bench import loadavg, write_json
from evit_ros.config import DEFAULT_MODEL, DiagnosticsConfig, DrivableConfig, InputConfig, ModelConfig, OutputConfig
from evit_ros.contract import NODE_HEAD
from evit_ros.errors import ConfigError, EvitError

log = logging.getLogger(__name__)
HEAD = NODE_HEAD   # the node's head



def unknown_sets(seed: int = 0) -> dict[str, Callable[[np.ndarray, int], np.ndarray]]:
    """Transforms of a held-out frame (and its index) into a frame unlike anything the model learned."""
    def noise(rgb: np.ndarray, i: int) -> np.ndarray:
        return np.random.default_rng(seed + i).integers(0, 256, rgb.shape, dtype=np.uint8)

    def covered(rgb: np.ndarray, i: int) -> np.ndarray:   # mud: brown, little texture, a trace of the scene
        mud = np.empty_like(rgb)
        mud[:] = (92, 70, 48)
        return cv2.addWeighted(mud, 0.85, cv2.GaussianBlur(rgb, (0, 0), 12), 0.15, 0.0)

    return {'noise': noise, 'inverted': lambda rgb, i: 255 - rgb,
            'blurred': lambda rgb, i: cv2.GaussianBlur(rgb, (0, 0), 8),
            'dark': lambda rgb, i: (rgb.astype(np.float32) * 0.12).astype(np.uint8), 'covered': covered}


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(a known frame scores higher than an unknown one), ties counting half (Mann-Whitney)."""
    k = known[:, None]
    u = unknown[None, :]
    return float(((k > u).sum() + 0.5 * (k == u).sum()) / (known.size * unknown.size))


def _summary(means: np.ndarray, lows: np.ndarray) -> dict[str, float]:
    return {'mean_confidence': round(float(means.mean()), 4), 'p5': round(float(np.percentile(means, 5)), 4),
            'p95': round(float(np.percentile(means, 95)), 4), 'min': round(float(means.min()), 4),
            'max': round(float(means.max()), 4), 'low_fraction': round(float(lows.mean()), 4)}


def run_uncertainty_benchmark(*, model: ModelConfig, hw: tuple[int, int], frames: int = 32, threads: int = 2,
                              threshold: float | None = None, min_mean: float | None = None) -> dict[str, Any]:
    """Per-set confidence statistics and the separation of each unknown set from the held-out scenes."""
    from evit_ros.backends import ensure_onnx, resolve_checkpoint
    from evit_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
    from evit_ros.datasets import dataset_for_model
    from evit_ros.pipeline import Segmenter
    from evit_ros.synthetic.scenes import generate_scene
    from evit_ros.synthetic.train import HELDOUT_SEED_BASE

    defaults = DiagnosticsConfig()
    threshold = defaults.low_confidence_threshold if threshold is None else threshold
    min_mean = defaults.min_mean_confidence if min_mean is None else min_mean
    if frames < 2 or threads < 0 or not 0.0 < threshold < 1.0 or not 0.0 < min_mean < 1.0:
        raise ConfigError(f'frames={frames}, threads={threads}, threshold={threshold}, min_mean={min_mean}: need '
                          'frames >= 2, threads >= 0, 0 < threshold < 1 and 0 < min_mean < 1')
    input_cfg = InputConfig(height=hw[0], width=hw[1])
    checkpoint = resolve_checkpoint(model, log)
    backend = OnnxRuntimeBackend(ensure_onnx(model, input_cfg, HEAD, checkpoint=checkpoint, logger=log),
                                 threads=threads, device='cpu')
    backend.load()
    load_before = loadavg()
    try:
        seg = Segmenter(backend, input_cfg=input_cfg, outputs=OutputConfig(), drivable=DrivableConfig(),
                        dataset=dataset_for_model(model.name))
        heldout = [generate_scene(HELDOUT_SEED_BASE + i, *hw)[0] for i in range(frames)]
        sets = {'heldout': heldout}
        for name, fn in unknown_sets().items():
            sets[name] = [fn(rgb, i) for i, rgb in enumerate(heldout)]
        stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, imgs in sets.items():
            pairs = [seg.run_labels([img], confidence_threshold=threshold)[0].confidence_stats for img in imgs]
            if any(p is None for p in pairs):
                raise EvitError(f'the {HEAD} graph gave no confidence statistics')
            stats[name] = (np.array([p[0] for p in pairs if p]), np.array([p[1] for p in pairs if p]))
    finally:
        backend.close()
    known = stats['heldout'][0]
    report: dict[str, Any] = {
        'model': model.name, 'checkpoint': checkpoint, 'input_hw': list(hw), 'frames_per_set': frames,
        'threads': threads, 'low_confidence_threshold': threshold, 'min_mean_confidence': min_mean,
        'load_average_before': load_before, 'load_average_after': loadavg(),
        'heldout_below_min_mean': round(float((known < min_mean).mean()), 4), 'sets': {}}
    for name, (means, lows) in stats.items():
        entry = _summary(means, lows)
        if name != 'heldout':
            entry['auroc_vs_heldout'] = round(auroc(known, means), 4)
            entry['below_min_mean'] = round(float((means < min_mean).mean()), 4)
        report['sets'][name] = entry
    return report


def format_table(report: dict[str, Any]) -> str:
    h, w = report['input_hw']
    lines = [f"{report['model']} {h}x{w} ({Path(report['checkpoint']).name}), {report['frames_per_set']} frames "
             f"per set, low_confidence_threshold {report['low_confidence_threshold']}, min_mean_confidence "
             f"{report['min_mean_confidence']}, load average {report['load_average_before']} -> "
             f"{report['load_average_after']}",
             f"{'set':<10}{'mean':>7}{'p5':>7}{'p95':>7}{'low frac':>10}{'AUROC':>8}{'< min_mean':>12}"]
    for name, e in report['sets'].items():
        below = report['heldout_below_min_mean'] if name == 'heldout' else e['below_min_mean']
        au = f"{e['auroc_vs_heldout']:>8.3f}" if 'auroc_vs_heldout' in e else f"{'-':>8}"
        lines.append(f"{name:<10}{e['mean_confidence']:>7.3f}{e['p5']:>7.3f}{e['p95']:>7.3f}"
                     f"{e['low_fraction']:>10.3f}{au}{100 * below:>11.0f}%")
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m evit_ros.bench.uncertainty',
                                description='Separation of the uncertainty signal: held-out synthetic scenes vs '
                                            'noise, inverted, blurred, dark and covered frames.')
    p.add_argument('--model', default=DEFAULT_MODEL, help=f'zoo name (default {DEFAULT_MODEL})')
    p.add_argument('--checkpoint', default='', help='weights (default: official on the search path, else the demo)')
    p.add_argument('--height', type=int, default=256, help='network input height (default 256, the demo training size)')
    p.add_argument('--width', type=int, default=512, help='network input width (default 512)')
    p.add_argument('--frames', type=int, default=32, help='frames per set (default 32)')
    p.add_argument('--threads', type=int, default=2, help='ONNX Runtime intra-op threads (default 2; 0: default)')
    p.add_argument('--threshold', type=float, default=None,
                   help='low-confidence pixel threshold (default diagnostics.low_confidence_threshold)')
    p.add_argument('--min-mean', type=float, default=None,
                   help='WARN threshold of the mean confidence (default diagnostics.min_mean_confidence)')
    p.add_argument('--json', default='', help='write the report to this JSON file')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        report = run_uncertainty_benchmark(model=ModelConfig(name=args.model, checkpoint=args.checkpoint),
                                           hw=(args.height, args.width), frames=args.frames, threads=args.threads,
                                           threshold=args.threshold, min_mean=args.min_mean)
    except EvitError as exc:
        sys.stderr.write(f'evit_ros.bench.uncertainty: {exc}\n')
        return 2
    sys.stdout.write(format_table(report) + '\n')
    write_json(args.json, report)
    return 0


if __name__ == '__main__':
    sys.exit(main())
