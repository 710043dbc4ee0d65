"""``evit-ros build-engine``: a cached TensorRT engine (+ JSON sidecar) from an exported ONNX graph."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from evit_ros.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--params-file', help='node YAML (config/evit_ros.yaml): defaults for --onnx/--precision/-o')
    parser.add_argument('--onnx', help='ONNX file written by `evit-ros export`')
    parser.add_argument('--precision', choices=('fp32', 'fp16', 'int8'),
                        help='fp16 (default) keeps the attention scope in FP32; int8 builds a Q/DQ ONNX from '
                             '`evit-ros quantize` (TensorRT 8.6 may instead calibrate a float ONNX)')
    calib = parser.add_mutually_exclusive_group()
    calib.add_argument('--calib-images', help='folder of camera images for implicit INT8 calibration '
                       '(TensorRT 8.6 only)')
    calib.add_argument('--calib-bag', help='ROS 2 bag with camera frames for implicit INT8 calibration '
                       '(TensorRT 8.6 only)')
    parser.add_argument('--calib-topic', help='Image/CompressedImage topic in --calib-bag')
    parser.add_argument('--calib-batches', type=int, default=64, help='max calibration batches (default 64)')
    parser.add_argument('--calib-cache', help='calibration cache file (default: engines/calib-<onnx sha>-<data '
                        'hash>-p<policy>.cache, so another model or data set never reuses it)')
    parser.add_argument('--workspace-mb', type=int, help='builder workspace limit in MiB (default: TensorRT)')
    parser.add_argument('--dla-core', type=int, help='build for this DLA core (Jetson AGX/NX) with GPU fallback; '
                        'fp16 or int8 only (DLA has no FP32)')
    parser.add_argument('--timing-cache', help='persistent timing cache file (default: timing.cache next to the '
                        '-o engine, else engines/timing.cache)')
    parser.add_argument('--max-batch', type=int, help='max batch of a dynamic-batch ONNX (default: its metadata)')
    parser.add_argument('--opt-batch', type=int,
                        help='batch TensorRT tunes for in a dynamic-batch ONNX: the number of cameras (default: '
                             'the cameras in --params-file, else the max batch)')
    parser.add_argument('--force', action='store_true',
                        help='rebuild even if the engine exists with the same cache key (default: reuse it)')
    parser.add_argument('-o', '--output',
                        help='engine file (default engines/<model>_<H>x<W>_<head>_b<N>_<prec>.engine)')


def _calib_factory(args: argparse.Namespace, onnx_path: str) -> Any:
    if not (args.calib_images or args.calib_bag):
        return None
    if args.calib_bag and not args.calib_topic:
        raise ConfigError('--calib-bag needs --calib-topic (the camera Image or CompressedImage topic)')
    from evit_ros.export import calibration, engine_cache
    from evit_ros.fileio import file_sha256
    source = calibration.calibration_source(args.calib_images, args.calib_bag, args.calib_topic, args.calib_batches)
    cache = args.calib_cache or str(calibration.calibration_cache_path(
        Path(args.output).parent if args.output else 'engines', file_sha256(onnx_path), source,
        engine_cache.PRECISION_POLICY))

    def factory(shape: tuple[int, ...], input_format: str) -> Any:
        from evit_ros.export.tensorrt_build import import_tensorrt
        hw = (shape[1], shape[2]) if input_format == 'uint8-nhwc' else (shape[2], shape[3])
        if args.calib_images:
            frames = calibration.iter_image_folder(args.calib_images, hw)
        else:
            frames = calibration.iter_bag_frames(args.calib_bag, args.calib_topic, hw)
        batches = calibration.iter_batches(frames, shape[0], input_format, max_batches=args.calib_batches)
        return calibration.make_entropy_calibrator(batches, shape[0], cache, trt_module=import_tensorrt())
    factory.cache_file = cache  # type: ignore[attr-defined]
    return factory


def run(args: argparse.Namespace) -> int:
    from evit_ros.export.tensorrt_build import build_engine

    cfg = None
    if args.params_file:
        from evit_ros.config import load_config
        cfg = load_config(args.params_file)
    onnx_path = args.onnx or (cfg.backend.onnx_path if cfg and cfg.backend.onnx_path else None)
    if not onnx_path:
        raise ConfigError('give --onnx FILE (from `evit-ros export`) or a --params-file with backend.onnx_path')
    if not Path(onnx_path).is_file():
        raise ConfigError(f'--onnx {onnx_path} does not exist; create it with `evit-ros export ... -o {onnx_path}`')
    precision = args.precision or (cfg.backend.precision if cfg else 'fp16')
    output = args.output or (cfg.backend.engine_path if cfg and cfg.backend.engine_path else None)
    args.output = output
    factory = _calib_factory(args, onnx_path)
    opt_batch = args.opt_batch
    if opt_batch is None and cfg is not None:   # the node batches one frame per camera
        from evit_ros import contract
        from evit_ros.export.onnx_export import read_metadata
        dynamic_max = contract.dynamic_max_batch(read_metadata(onnx_path))
        if dynamic_max is not None:
            opt_batch = min(len(cfg.cameras), dynamic_max)
    timing_cache = args.timing_cache or str(Path(output).parent / 'timing.cache' if output else 'engines/timing.cache')
    t0 = time.perf_counter()
    calib_options = {'calib_images': args.calib_images, 'calib_bag': args.calib_bag, 'calib_topic': args.calib_topic,
                     'calib_batches': args.calib_batches, 'calib_cache': args.calib_cache} if factory else {}
    result = build_engine(onnx_path, output, precision=precision, calib_factory=factory,
                          workspace_mb=args.workspace_mb, dla_core=args.dla_core, timing_cache=timing_cache,
                          max_batch=args.max_batch, opt_batch=opt_batch, force=args.force,
                          command_options={'max_batch': args.max_batch, 'opt_batch': opt_batch, **calib_options})
    if result.reused:
        print(f'{result.engine_path} is up to date (cache key {result.cache_key[:16]}); --force rebuilds it')
        return 0
    print(f'built {result.engine_path} from {onnx_path}: {result.precision}'
          f'{" (strongly typed)" if result.strongly_typed else ""}, TensorRT {result.trt_version}, '
          f'{result.num_layers} layers, {len(result.fp32_layers)} attention layers FP32')
    insp = result.inspection
    if insp.get('inspected'):
        print(f'  FP32 check: {insp["checked_fp32"]} pinned layers verified FP32 in the engine, '
              f'{insp["unobserved"]} fused beyond inspection')
    else:
        print(f'  FP32 check skipped: {insp.get("reason", "n/a")}')
    print(f'  parse {result.parse_seconds:.1f} s, build {result.build_seconds:.1f} s, total '
          f'{time.perf_counter() - t0:.1f} s; {result.engine_bytes / 2**20:.1f} MiB')
    print(f'  sidecar {result.sidecar_path} (cache key {result.cache_key[:16]}); timing cache {timing_cache}')
    return 0
