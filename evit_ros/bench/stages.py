"""Stage benchmark of everything outside inference for one frame (decode .. occupancy grid).

A synthetic label map stands in for the network output, so the numbers isolate host-side cost. The plain
copy of the frame's bytes is the floor any decode can reach. Run ``python -m evit_ros.bench.stages``.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import cv2
import numpy as np

from evit_ros.bench import write_json
from evit_ros.config import GridConfig, MountConfig
from evit_ros.datasets import CITYSCAPES
from evit_ros.pipeline.decode import decode_image
from evit_ros.pipeline.drivable import ClassGroups, RoiMask, class_fractions, freespace_boundary, group_fraction
from evit_ros.pipeline.ground import GroundProjector
from evit_ros.pipeline.postprocess import Palette, labels_to_source
from evit_ros.pipeline.preprocess import Preprocessor

_BPP = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1, 'yuv422': 2, 'yuv422_yuy2': 2, 'bayer_rggb8': 1}


def _synthetic_labels(hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Road at the bottom, blobs of other classes elsewhere: realistic runs for the histogram and boundary."""
    h, w = hw
    small = rng.integers(1, 19, (max(1, h // 32), max(1, w // 32)), dtype=np.uint8)
    labels = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    horizon = (h * 0.55 + 0.1 * h * np.sin(np.linspace(0, 6, w))).astype(int)
    labels[np.arange(h)[:, None] >= horizon[None, :]] = 0
    return labels


def run_stage_benchmark(frame_hw: tuple[int, int] = (1024, 2048), model_hw: tuple[int, int] = (512, 1024),
                        iters: int = 30, encoding: str = 'bgr8', resize_mode: str = 'stretch',
                        interpolation: str = 'linear', threads: int | None = None) -> dict:
    """Per-stage p50/p90/max (ms) for one frame, the copy floor and the total of the p50s."""
    if threads is not None:
        cv2.setNumThreads(int(threads))
    rng = np.random.default_rng(0)
    h, w = frame_hw
    bpp = _BPP[encoding]
    step = w * bpp
    raw = rng.integers(0, 256, h * step, dtype=np.uint8).tobytes()
    copy_dst = np.empty(h * step, np.uint8)
    src_bytes = np.frombuffer(raw, np.uint8)
    pre = Preprocessor(model_hw, resize_mode, interpolation)
    batch = pre.batch_buffer(1)
    labels_model = _synthetic_labels(model_hw, rng)
    labels_full = np.empty(frame_hw, np.uint8)
    palette = Palette(CITYSCAPES.colors)
    color = np.empty((h, w, 3), np.uint8)
    color_model = np.empty((*model_hw, 3), np.uint8)
    group = ClassGroups.from_names((('drivable', ('road',)),), CITYSCAPES).groups[0]
    roi = RoiMask(((0.0, 1.0), (0.3, 0.5), (0.7, 0.5), (1.0, 1.0)))
    mask = np.empty(frame_hw, np.uint8)
    roi_scratch = np.empty(frame_hw, np.uint8)
    b_scratch = (np.empty(frame_hw, np.bool_), np.empty(frame_hw, np.uint16))
    fx = w / 2.0 / np.tan(np.radians(45))
    K = [fx, 0, (w - 1) / 2, 0, fx, (h - 1) / 2, 0, 0, 1]
    t0 = time.perf_counter()
    proj = GroundProjector(K, frame_hw, frame_hw, MountConfig(height_m=1.5, pitch_deg=5.0),
                           GridConfig(resolution_m=0.1, length_m=40.0, width_m=20.0))
    setup_ms = (time.perf_counter() - t0) * 1e3
    grid = np.empty(proj.shape, np.int8)
    state: dict = {}

    def s_decode() -> None:
        state['rgb'] = decode_image(raw, encoding, h, w, step)

    def s_pre() -> None:
        pre.run([state['rgb']], out=batch)

    def s_labels() -> None:
        labels_to_source(labels_model, pre.plan(frame_hw), frame_hw, out=labels_full)

    def s_color() -> None:  # as the Segmenter does: color at the model size, then map like the labels
        palette.colorize(labels_model, out=color_model)
        labels_to_source(color_model, pre.plan(frame_hw), frame_hw, out=color, fill=0)

    def s_group() -> None:
        group.mask(labels_full, out=mask)
        class_fractions(labels_full, CITYSCAPES.num_classes)
        group_fraction(mask)
        roi.fraction(mask, scratch=roi_scratch)
        state['boundary'] = freespace_boundary(mask, scratch=b_scratch)

    def s_grid() -> None:
        proj.project(mask, out=grid)
        proj.boundary_points(state['boundary'])

    stages: dict[str, Callable[[], None]] = {
        'decode': s_decode, 'preprocess': s_pre, 'labels_to_source': s_labels, 'color_mask': s_color,
        'drivable_group': s_group, 'occupancy_grid': s_grid,
    }
    times: dict[str, list[float]] = {k: [] for k in ('copy_floor', *stages, 'total')}
    for it in range(iters + 2):
        tc = time.perf_counter()
        np.copyto(copy_dst, src_bytes)
        floor = (time.perf_counter() - tc) * 1e3
        start = time.perf_counter()
        row = {}
        for name, fn in stages.items():
            ts = time.perf_counter()
            fn()
            row[name] = (time.perf_counter() - ts) * 1e3
        total = (time.perf_counter() - start) * 1e3
        if it < 2:  # warm-up: first-touch page faults, OpenCV thread pool start
            continue
        times['copy_floor'].append(floor)
        for k, v in row.items():
            times[k].append(v)
        times['total'].append(total)
    summary = {k: {'p50': float(np.percentile(v, 50)), 'p90': float(np.percentile(v, 90)), 'max': float(np.max(v))}
               for k, v in times.items()}
    return {
        'frame_hw': list(frame_hw), 'model_hw': list(model_hw), 'encoding': encoding, 'iters': iters,
        'resize_mode': resize_mode, 'interpolation': interpolation, 'opencv': cv2.__version__,
        'numpy': np.__version__, 'cv2_threads': cv2.getNumThreads(), 'grid_setup_ms': setup_ms,
        'budget_ms': 15.0, 'budget_met': summary['total']['p50'] <= 15.0, 'stages_ms': summary,
    }


def format_table(report: dict) -> str:
    lines = [f"frame {report['frame_hw'][0]}x{report['frame_hw'][1]} {report['encoding']} -> model "
             f"{report['model_hw'][0]}x{report['model_hw'][1]} ({report['interpolation']}, "
             f"cv2 threads {report['cv2_threads']})",
             f"{'stage':<18}{'p50 ms':>9}{'p90 ms':>9}{'max ms':>9}"]
    for k, v in report['stages_ms'].items():
        lines.append(f"{k:<18}{v['p50']:>9.2f}{v['p90']:>9.2f}{v['max']:>9.2f}")
    lines.append(f"budget 15 ms: {'met' if report['budget_met'] else 'MISSED'} (total p50)")
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='python -m evit_ros.bench.stages',
                                 description='Host-side stage benchmark (everything outside inference).')
    ap.add_argument('--json', default='', help='write the reports to this JSON file')
    ap.add_argument('--iters', type=int, default=30)
    ap.add_argument('--encoding', default='bgr8', choices=sorted(_BPP))
    ap.add_argument('--interpolation', default='linear', choices=('bicubic', 'linear', 'area', 'nearest'))
    ap.add_argument('--threads', type=int, default=None, help='cv2.setNumThreads value (default: OpenCV default)')
    ap.add_argument('--sizes', default='1024x2048,1200x1920', help='comma-separated HxW frame sizes')
    args = ap.parse_args(argv)
    reports = []
    for size in args.sizes.split(','):
        fh, fw = (int(v) for v in size.lower().split('x'))
        rep = run_stage_benchmark((fh, fw), (512, 1024), args.iters, args.encoding, interpolation=args.interpolation,
                                  threads=args.threads)
        reports.append(rep)
        sys.stdout.write(format_table(rep) + '\n\n')
    write_json(args.json, reports)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
