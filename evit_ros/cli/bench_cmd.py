"""``evit-ros bench``: per-stage latency, throughput and memory of the node's pipeline on a backend.

``--backend`` takes a comma-separated list to compare runtimes in one run (ratios are only meaningful
within one run on these noisy machines); ``torch-eager-host`` is the plain-PyTorch baseline.
``--stages`` runs the host-only stage benchmark (decode .. occupancy grid) instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evit_ros.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--params-file', help='node YAML supplying model/size/backend defaults')
    parser.add_argument('--model', help='zoo name (default: from --params-file, else efficientvit-seg-b0-cityscapes)')
    parser.add_argument('--checkpoint', help='weights (default: official on the search path, else the demo weights)')
    parser.add_argument('--backend', default='onnxruntime',
                        help='auto|tensorrt|onnxruntime|torch|torch-eager-host, or a comma-separated list '
                             '(default onnxruntime)')
    parser.add_argument('--onnx', help='exported ONNX for onnxruntime (default: export automatically)')
    parser.add_argument('--engine', help='TensorRT engine for the tensorrt backend')
    parser.add_argument('--height', type=int, help='network input height (multiple of 32)')
    parser.add_argument('--width', type=int, help='network input width (multiple of 32)')
    parser.add_argument('--camera-size', metavar='HxW', help='camera frame size (default: the input size)')
    parser.add_argument('--head', choices=('labels', 'labels+logits', 'labels+confidence', 'labels-lowres'),
                        default='labels+logits',
                        help='graph head (default labels+logits, as the node, with confidence computed from the '
                             '1/8 logits; labels compares like for like with torch-eager-host)')
    parser.add_argument('--batch', type=int, default=1, help='frames per run, cameras sharing the engine (default 1)')
    parser.add_argument('--iters', type=int, default=20, help='timed iterations after warm-up (default 20)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed iterations first (default 3)')
    parser.add_argument('--threads', type=int, default=0, help='runtime threads (0: runtime default)')
    parser.add_argument('--json', help='write the report(s) to this JSON file')
    parser.add_argument('--stages', action='store_true', help='host-only stage benchmark instead (no network)')


def run(args: argparse.Namespace) -> int:
    from evit_ros.bench.backends import BASELINE, BENCH_BACKENDS, format_report, run_benchmark
    from evit_ros.cli.export_cmd import parse_hw
    from evit_ros.config import BackendConfig, load_config

    overrides: dict[str, object] = {}
    for key, value in (('model.name', args.model), ('model.checkpoint', args.checkpoint),
                       ('input.height', args.height), ('input.width', args.width)):
        if value is not None:
            overrides[key] = value
    cfg = load_config(args.params_file, overrides=overrides)
    camera_hw = parse_hw(args.camera_size) if args.camera_size else (cfg.input.height, cfg.input.width)
    if args.stages:
        from evit_ros.bench.stages import format_table, run_stage_benchmark
        rep = run_stage_benchmark(camera_hw, (cfg.input.height, cfg.input.width), args.iters,
                                  interpolation=cfg.input.interpolation)
        sys.stdout.write(format_table(rep) + '\n')
        if args.json:
            Path(args.json).write_text(json.dumps(rep, indent=2))
        return 0
    if args.batch < 1 or args.iters < 1:
        raise ConfigError(f'--batch {args.batch} and --iters {args.iters} must be >= 1')
    kinds = [k.strip() for k in args.backend.split(',') if k.strip()]
    for k in kinds:
        if k not in BENCH_BACKENDS:
            raise ConfigError(f'--backend {k!r} is not valid; use {", ".join(BENCH_BACKENDS)} (comma-separated)')
    # a YAML's graph holds its own weights and size: with any of them overridden, export these instead
    overridden = any(v is not None for v in (args.model, args.checkpoint, args.height, args.width))
    onnx = args.onnx or ('' if overridden else cfg.backend.onnx_path)
    reports = []
    for kind in kinds:
        bcfg = BackendConfig(type=kind if kind != BASELINE else 'auto', threads=args.threads,
                             onnx_path=onnx if kind == 'onnxruntime' else '',
                             engine_path=args.engine or cfg.backend.engine_path,
                             precision=cfg.backend.precision)
        rep = run_benchmark(backend=kind, model=cfg.model, input_cfg=cfg.input, camera_hw=camera_hw,
                            batch=args.batch, iters=args.iters, warmup=args.warmup, threads=args.threads,
                            backend_cfg=bcfg, head=args.head)
        reports.append(rep)
        sys.stdout.write(format_report(rep) + '\n\n')
    doc: dict[str, object]
    if len(reports) == 1:
        doc = reports[0]
    else:
        base = reports[0]['latency_ms']['p50']
        doc = {'runs': reports, 'p50_relative_to_first': {r['backend']: round(r['latency_ms']['p50'] / base, 3)
                                                          for r in reports}}
        sys.stdout.write('p50 latency relative to ' + reports[0]['backend'] + ': ' + ', '.join(
            f'{k} {v:.2f}x' for k, v in doc['p50_relative_to_first'].items()) + '\n')  # type: ignore[union-attr]
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
        sys.stdout.write(f'wrote {args.json}\n')
    return 0
