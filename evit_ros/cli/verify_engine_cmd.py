"""``evit-ros verify-engine``: the engine against ONNX Runtime on real frames; non-zero exit when it is off.

Run it on the device after every engine build (docs/tensorrt.md, "Verify every engine on the device").
``--candidate-onnx`` compares two ONNX graphs on the CPU instead (e.g. INT8 against FP32, with the latency ratio).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from evit_ros.errors import ConfigError

log = logging.getLogger(__name__)
EXIT_FAILED = 3   # ran fine, the engine is outside the thresholds (1: usage/setup error)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group()
    what.add_argument('--engine', help='TensorRT engine (with its .json sidecar; default: backend.engine_path of '
                                       '--params-file)')
    what.add_argument('--candidate-onnx', help='check an ONNX instead of an engine, on ONNX Runtime CPU (e.g. the '
                                               'INT8 graph of `evit-ros quantize` against --onnx FP32)')
    parser.add_argument('--onnx', help='reference ONNX (default: the one the engine was built from, per its sidecar)')
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument('--bag', help='ROS 2 bag with camera frames')
    src.add_argument('--images', help='folder of camera images (sub-folders are cameras, interleaved)')
    parser.add_argument('--image-topic', action='append', default=[],
                        help='Image/CompressedImage topic in --bag; repeat per camera')
    parser.add_argument('--max-frames', type=int, default=100, help='frames to compare (default 100; 0: all)')
    parser.add_argument('--min-agreement', type=float,
                        help='minimum label agreement in %% (default: 99.9 fp32, 99.5 fp16)')
    parser.add_argument('--max-miou-delta', type=float,
                        help='maximum mIoU points below 100 of the engine scored against ONNX Runtime '
                             '(default: 1.0 for int8)')
    parser.add_argument('--params-file', help='node YAML: backend.engine_path / onnx_path defaults and the '
                                              'input.resize_mode / input.interpolation of the node')
    parser.add_argument('--threads', type=int, default=0, help='ONNX Runtime CPU threads (default: runtime)')
    parser.add_argument('--json', default='verify_engine.json', help='report file (default verify_engine.json)')


def open_engine(engine: Path, precision: str) -> Any:
    """The node's TensorRT backend for ``engine`` (no rebuild: a stale engine is an error to report)."""
    from evit_ros.backends.tensorrt_backend import TensorRTBackend
    return TensorRTBackend(engine, precision=precision, build_if_stale=False)


def run(args: argparse.Namespace) -> int:
    from evit_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
    from evit_ros.config import load_config
    from evit_ros.eval.verify_engine import Thresholds, compare, onnx_from_sidecar
    from evit_ros.export import engine_cache

    if args.candidate_onnx:
        return _run_candidate(args)
    cfg = load_config(args.params_file)
    if not args.engine and not cfg.backend.engine_path:
        raise ConfigError('give --engine ENGINE (or a --params-file with backend.engine_path), or --candidate-onnx')
    engine = Path(args.engine or cfg.backend.engine_path)
    if not engine.is_file():
        raise ConfigError(f'engine {engine} does not exist; build it with `evit-ros build-engine`')
    sidecar = engine_cache.read_sidecar(engine)
    precision = str(sidecar.get('fields', {}).get('precision', 'fp16'))
    onnx = args.onnx or onnx_from_sidecar(sidecar) or cfg.backend.onnx_path or None
    if not args.onnx and onnx and not Path(onnx).is_file() and (engine.parent / Path(onnx).name).is_file():
        onnx = str(engine.parent / Path(onnx).name)   # built elsewhere (relative path), copied next to the engine
    if not onnx or not Path(onnx).is_file():
        raise ConfigError(f'reference ONNX {onnx!r} not found; pass --onnx (the file the engine was built from)')
    thresholds = Thresholds.for_precision(precision, args.min_agreement, args.max_miou_delta)
    frames = _frames(args)
    with open_engine(engine, precision) as trt_backend, \
            OnnxRuntimeBackend(onnx, threads=args.threads, device='cpu') as ort_backend:
        trt_backend.warmup(2)   # first runs pay TensorRT's lazy allocations: not the engine's latency
        ort_backend.warmup(2)
        report = compare(trt_backend, ort_backend, frames, thresholds=thresholds, precision=precision,
                         class_names=ort_backend.io.class_names, resize_mode=cfg.input.resize_mode,
                         interpolation=cfg.input.interpolation, max_frames=args.max_frames,
                         engine_label=str(engine), reference_label=str(onnx))
    return _finish(report, args.json)


def _frames(args: argparse.Namespace) -> Any:
    from evit_ros.export.quantize import camera_frames
    if args.bag and not args.image_topic:
        raise ConfigError('--bag needs --image-topic (the camera Image or CompressedImage topic)')
    if args.max_frames < 0:
        raise ConfigError(f'--max-frames {args.max_frames} must be >= 0')
    return camera_frames(bag=args.bag, topics=args.image_topic, folder=None if args.bag else args.images)


def _finish(report: Any, json_path: str) -> int:
    from evit_ros.eval.verify_engine import write_report
    print(report.table())
    path = write_report(report, json_path)
    print(f'report: {path}')
    return 0 if report.passed else EXIT_FAILED


def _run_candidate(args: argparse.Namespace) -> int:
    """An ONNX (e.g. INT8 Q/DQ) against the reference ONNX, both on ONNX Runtime CPU, interleaved frame by frame."""
    from evit_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
    from evit_ros.config import load_config
    from evit_ros.eval.verify_engine import Thresholds, compare
    from evit_ros.export.onnx_export import read_metadata
    from evit_ros.export.quantize import META_QUANTIZATION
    if not args.onnx:
        raise ConfigError('--candidate-onnx needs --onnx (the reference graph, e.g. the FP32 export)')
    for p in (args.candidate_onnx, args.onnx):
        if not Path(p).is_file():
            raise ConfigError(f'{p} does not exist')
    precision = 'int8' if META_QUANTIZATION in read_metadata(args.candidate_onnx) else 'fp32'
    cfg = load_config(args.params_file)
    thresholds = Thresholds.for_precision(precision, args.min_agreement, args.max_miou_delta)
    frames = _frames(args)
    with OnnxRuntimeBackend(args.candidate_onnx, threads=args.threads, device='cpu') as cand, \
            OnnxRuntimeBackend(args.onnx, threads=args.threads, device='cpu') as ref:
        cand.warmup(2)
        ref.warmup(2)
        report = compare(cand, ref, frames, thresholds=thresholds, precision=precision,
                         class_names=ref.io.class_names, resize_mode=cfg.input.resize_mode,
                         interpolation=cfg.input.interpolation, max_frames=args.max_frames,
                         engine_label=str(args.candidate_onnx), reference_label=str(args.onnx))
    return _finish(report, args.json)
