"""Benchmark of the eval executors: local (one and two processes) vs Ray with 1 and 2 actors on the same bags.

Prints a table and writes JSON. Two measurements per executor, with the node's real pipeline (ONNX Runtime,
EfficientViT-B0 graph with seeded weights):

* throughput: frames per second over a few bags of many frames (wall time from the first shard's start to the
  last shard's end, so the one-off cluster and actor start-up is reported separately);
* fixed cost per shard: many one-frame bags through one worker; the gaps between one shard's end and the
  next one's start in the worker are the executor's own per-shard cost (scheduling, round trip, result
  transfer), since the worker's shard time (bag open, decode, inference, scoring) is excluded.

The machine is usually shared: compare the ratios within one run, and read the load average it records.

    python -m evit_ros.bench.eval_executors --json bench_eval_executors.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# the folder that holds the evit_ros package: Ray's workers import it from there
PACKAGE_ROOT = Path(__file__).resolve().parents[2]

IMG = '/front/image_raw'


def _bags(root: Path, count: int, frames: int, hw: tuple[int, int], seed: int) -> list[str]:
    """``count`` MCAP bags of ``frames`` random JPEG frames each on one camera topic (10 Hz stamps)."""
    from evit_ros.eval.bags import COMPRESSED, BagWriter
    rng = np.random.default_rng(seed)
    out = []
    for b in range(count):
        path = root / f'bag{seed}_{b}'
        with BagWriter(path) as w:
            for i in range(frames):
                stamp = 1_700_000_000_000_000_000 + i * 10**8
                rgb = rng.integers(0, 255, (*hw, 3), dtype=np.uint8)
                w.write(IMG, COMPRESSED, w.factory.compressed(rgb, stamp, 'jpeg'), 1_000_000_000 + i * 1000)
        out.append(str(path))
    return out


def _seeded_onnx(out: Path, height: int, width: int) -> Path:
    """A b0 graph (the node's head) with seeded random weights: the pipeline's real work, no checkpoint."""
    import torch

    from evit_ros.contract import NODE_HEAD
    from evit_ros.export.onnx_export import export_onnx
    torch.set_num_threads(1)
    torch.manual_seed(0)   # the model is created inside export_onnx, after this
    export_onnx('efficientvit-seg-b0-cityscapes', out, height=height, width=width, head=NODE_HEAD)
    return out


def _run(bags: list[str], factory: Any, executor: str, jobs: int) -> dict[str, Any]:
    from evit_ros.eval.executors import ExecutionOptions, execute
    from evit_ros.eval.scoring import EvalSpec
    from evit_ros.eval.shards import plan_shards
    spec = EvalSpec((IMG,), samples=0, progress=False)
    plan = plan_shards(bags, spec)
    t0 = time.time()
    state, results = execute(plan, spec, factory, 19, ExecutionOptions(executor, jobs, progress=False))
    wall = time.time() - t0
    if state.shards['failed']:
        raise RuntimeError(f'benchmark shards failed: {state.shards["failed"]}')
    first = min(r.started_at for r in results)
    last = max(r.started_at + r.seconds for r in results)
    frames = int(state.counters['frames'])
    by_worker: dict[str, list[Any]] = {}
    for r in results:
        by_worker.setdefault(r.worker, []).append(r)
    gaps = []
    for rs in by_worker.values():
        rs.sort(key=lambda r: r.started_at)
        gaps += [b.started_at - (a.started_at + a.seconds) for a, b in zip(rs, rs[1:], strict=False)]
    return {'frames': frames, 'shards': len(results), 'workers': len(by_worker), 'wall_s': round(wall, 3),
            'startup_s': round(first - t0, 3), 'busy_s': round(last - first, 3),
            'fps': round(frames / max(last - first, 1e-9), 3),
            'worker_shard_s_mean': round(float(np.mean([r.seconds for r in results])), 4),
            'gap_per_shard_ms': round(1000 * float(np.median(gaps)), 2) if gaps else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m evit_ros.bench.eval_executors', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--bags', type=int, default=4, help='bags for the throughput run (default 4)')
    p.add_argument('--frames', type=int, default=24, help='frames per bag (default 24)')
    p.add_argument('--tiny-bags', type=int, default=24, help='one-frame bags for the per-shard cost (default 24)')
    p.add_argument('--camera', default='480x640', help='camera HxW (default 480x640, JPEG)')
    p.add_argument('--input', default='256x512', help='model input HxW (default 256x512)')
    p.add_argument('--rounds', type=int, default=3, help='interleaved rounds; medians reported (default 3)')
    p.add_argument('--json', default='bench_eval_executors.json')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault('EVIT_ROS_CACHE', tempfile.mkdtemp(prefix='evit_bench_cache_'))
    cam = tuple(int(v) for v in args.camera.split('x'))
    ih, iw = (int(v) for v in args.input.split('x'))

    import ray

    from evit_ros.config import load_config
    from evit_ros.eval.runner import PipelineFactory
    root = Path(tempfile.mkdtemp(prefix='evit_bench_eval_'))
    onnx = _seeded_onnx(root / 'b0.onnx', ih, iw)
    big = _bags(root, args.bags, args.frames, cam, 1)   # type: ignore[arg-type]
    tiny = _bags(root, args.tiny_bags, 1, cam, 2)       # type: ignore[arg-type]

    def factory(threads: int) -> PipelineFactory:
        return PipelineFactory(load_config(None, overrides={
            'backend.type': 'onnxruntime', 'backend.onnx_path': str(onnx), 'backend.threads': threads,
            'input.height': ih, 'input.width': iw, 'outputs.mask_resolution': 'camera'}))

    t0 = time.time()
    ray.init(address='local', num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING,
             runtime_env={'env_vars': {'PYTHONPATH': str(PACKAGE_ROOT)}})
    cluster_start = time.time() - t0
    cores = os.cpu_count() or 1
    configs = [('local --jobs 1', 'local', 1, cores), ('local --jobs 2', 'local', 2, max(1, cores // 2)),
               ('ray 1 actor', 'ray', 1, cores), ('ray 2 actors', 'ray', 2, max(1, cores // 2))]
    runs: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {c[0]: [] for c in configs}
    load_before = os.getloadavg()
    try:
        for _ in range(args.rounds):          # interleaved rounds: load changes hit every config alike
            for name, ex, jobs, threads in configs:
                runs[name].append((_run(big, factory(threads), ex, jobs), _run(tiny, factory(threads), ex, 1)))
    finally:
        ray.shutdown()

    def med(vals: list[Any]) -> float:
        return round(float(np.median([v for v in vals if v is not None])), 3)

    rows = []
    for name, ex, jobs, threads in configs:
        rs = runs[name]
        thr = {k: med([t[k] for t, _ in rs]) for k in ('fps', 'startup_s', 'busy_s', 'wall_s')}
        over = {k: med([o[k] for _, o in rs]) for k in ('gap_per_shard_ms', 'worker_shard_s_mean', 'wall_s')}
        rows.append({'config': name, 'executor': ex, 'workers': jobs, 'ort_threads': threads,
                     'throughput': {**thr, 'frames': rs[0][0]['frames'],
                                    'fps_rounds': [t['fps'] for t, _ in rs]},
                     'per_shard': {**over, 'shards': rs[0][1]['shards'],
                                   'gap_ms_rounds': [o['gap_per_shard_ms'] for _, o in rs]}})
    base = rows[0]['throughput']['fps']
    for r in rows:
        r['fps_vs_local'] = round(r['throughput']['fps'] / base, 3)
    out = {'machine': {'cpus': cores, 'loadavg_before': [round(v, 2) for v in load_before],
                       'loadavg_after': [round(v, 2) for v in os.getloadavg()], 'ray': ray.__version__,
                       'note': 'shared machine: compare ratios within this run'},
           'setup': {'rounds': args.rounds, 'bags': args.bags, 'frames_per_bag': args.frames,
                     'tiny_bags': args.tiny_bags,
                     'camera': args.camera, 'input': args.input, 'ray_local_cluster_start_s': round(cluster_start, 2)},
           'results': rows}
    Path(args.json).write_text(json.dumps(out, indent=2))
    lines = [f'medians of {args.rounds} interleaved rounds',
             f'{"config":<16}{"fps":>8}{"x local":>9}{"startup s":>11}{"shard gap ms":>14}{"1-frame shard s":>17}']
    for r in rows:
        t, o = r['throughput'], r['per_shard']
        lines.append(f'{r["config"]:<16}{t["fps"]:>8.2f}{r["fps_vs_local"]:>9.2f}{t["startup_s"]:>11.2f}'
                     f'{o["gap_per_shard_ms"]:>14.1f}{o["worker_shard_s_mean"]:>17.3f}')
    lines.append(f'Ray local cluster start {cluster_start:.1f} s; load average before {load_before[0]:.2f}, '
                 f'after {os.getloadavg()[0]:.2f} on {cores} CPUs (shared machine); JSON: {args.json}')
    sys.stdout.write('\n'.join(lines) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
