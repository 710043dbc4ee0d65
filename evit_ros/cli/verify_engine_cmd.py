"""``evit-ros verify-engine``: the engine against ONNX Runtime on real frames; non-zero exit when it is off.

Run it on the device after every engine build (see README, "Verify every engine").
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
    parser.add_argument('--engine', required=True, help='TensorRT engine (with its .json sidecar)')
    parser.add_argument('--onnx', help='reference ONNX (default: the one the engine was built from, per its sidecar)')
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument('--bag', help='ROS 2 bag with camera frames')
    src.add_argument('--images', help='folder of camera images (sub-folders included)')
    parser.add_argument('--image-topic', action='append', default=[],
                        help='Image/CompressedImage topic in --bag; repeat per camera')
    parser.add_argument('--max-frames', type=int, default=100, help='frames to compare (default 100; 0: all)')
    parser.add_argument('--min-agreement', type=float,
                        help='minimum label agreement in %% (default: 99.9 fp32, 99.5 fp16)')
    parser.add_argument('--max-miou-delta', type=float,
                        help='maximum mIoU points below 100 of the engine scored against ONNX Runtime '
                             '(default: 1.0 for int8)')
    parser.add_argument('--params-file', help='node YAML: input.resize_mode / input.interpolation of the node')
    parser.add_argument('--threads', type=int, default=0, help='ONNX Runtime CPU threads (default: runtime)')
    parser.add_argument('--json', default='verify_engine.json', help='report file (default verify_engine.json)')


def open_engine(engine: Path, precision: str) -> Any:
    """The node's TensorRT backend for ``engine`` (no rebuild: a stale engine is an error to report)."""
    from evit_ros.backends.tensorrt_backend import TensorRTBackend
    return TensorRTBackend(engine, precision=precision, build_if_stale=False)


def run(args: argparse.Namespace) -> int:
    from evit_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
    from evit_ros.config import load_config
    from evit_ros.eval.verify_engine import Thresholds, compare, onnx_from_sidecar, write_report
    from evit_ros.export import calibration, engine_cache
    from evit_ros.export.quantize import interleave

    engine = Path(args.engine)
    if not engine.is_file():
        raise ConfigError(f'--engine {engine} does not exist; build it with `evit-ros build-engine`')
    if args.bag and not args.image_topic:
        raise ConfigError('--bag needs --image-topic (the camera Image or CompressedImage topic)')
    if args.max_frames < 0:
        raise ConfigError(f'--max-frames {args.max_frames} must be >= 0')
    sidecar = engine_cache.read_sidecar(engine)
    precision = str(sidecar.get('fields', {}).get('precision', 'fp16'))
    onnx = args.onnx or onnx_from_sidecar(sidecar)
    if not onnx or not Path(onnx).is_file():
        raise ConfigError(f'reference ONNX {onnx!r} not found; pass --onnx (the file the engine was built from)')
    cfg = load_config(args.params_file)
    thresholds = Thresholds.for_precision(precision, args.min_agreement, args.max_miou_delta)
    if args.bag:
        frames: Any = interleave([calibration.iter_bag_frames(args.bag, t, None) for t in args.image_topic])
    else:
        frames = calibration.iter_image_folder(args.images, None, recursive=True)
    with open_engine(engine, precision) as trt_backend, \
            OnnxRuntimeBackend(onnx, threads=args.threads, device='cpu') as ort_backend:
        report = compare(trt_backend, ort_backend, frames, thresholds=thresholds, precision=precision,
                         class_names=ort_backend.io.class_names, resize_mode=cfg.input.resize_mode,
                         interpolation=cfg.input.interpolation, max_frames=args.max_frames,
                         engine_label=str(engine), reference_label=str(onnx))
    print(report.table())
    path = write_report(report, args.json)
    print(f'report: {path}')
    return 0 if report.passed else EXIT_FAILED
