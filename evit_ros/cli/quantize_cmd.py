"""``evit-ros quantize``: an explicitly quantized (Q/DQ INT8) ONNX for TensorRT, calibrated on camera frames."""
from __future__ import annotations

import argparse

from evit_ros.errors import ConfigError

DEFAULT_MAX_FRAMES = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--onnx', required=True, help='FP32 ONNX written by `evit-ros export`')
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument('--calib-bag', help='ROS 2 bag (directory, .mcap or .db3) with camera frames')
    src.add_argument('--calib-dir', help='folder of camera images (sub-folders are cameras, interleaved)')
    parser.add_argument('--calib-topic', action='append', default=[],
                        help='Image/CompressedImage topic in --calib-bag; repeat per camera (frames interleaved)')
    parser.add_argument('--max-frames', type=int, default=DEFAULT_MAX_FRAMES,
                        help=f'calibration frames in total, all cameras (default {DEFAULT_MAX_FRAMES}, at most 1024)')
    parser.add_argument('--calib-method', choices=('percentile', 'minmax', 'entropy'), default='percentile',
                        help='activation range estimator (default percentile: 99.99th of |x|)')
    parser.add_argument('--params-file', help='node YAML: input.resize_mode / input.interpolation of the node')
    parser.add_argument('--threads', type=int, default=0, help='ONNX Runtime CPU threads (default: runtime)')
    parser.add_argument('-o', '--output', required=True, help='Q/DQ INT8 ONNX to write')


def run(args: argparse.Namespace) -> int:
    from evit_ros.config import load_config
    from evit_ros.export.quantize import camera_frames, quantize_onnx

    if args.calib_bag and not args.calib_topic:
        raise ConfigError('--calib-bag needs --calib-topic (the camera Image or CompressedImage topic; repeat it '
                          'for several cameras)')
    if args.calib_dir and args.calib_topic:
        raise ConfigError('--calib-topic belongs to --calib-bag; drop it or give --calib-bag instead of --calib-dir')
    cfg = load_config(args.params_file)
    frames = camera_frames(bag=args.calib_bag, topics=args.calib_topic, folder=args.calib_dir)
    if args.calib_bag:
        source = f'{args.calib_bag} ({", ".join(args.calib_topic)})'
    else:
        source = str(args.calib_dir)
    report = quantize_onnx(args.onnx, args.output, frames, max_frames=args.max_frames,
                           calib_method=args.calib_method, resize_mode=cfg.input.resize_mode,
                           interpolation=cfg.input.interpolation, calib_source=source, threads=args.threads)
    print(f'quantized {args.onnx} -> {report.path}')
    print(f'  {len(report.quantized_nodes)} convolutions INT8 (symmetric: per-channel weights, per-tensor '
          f'activations); {len(report.kept_fp32_nodes)} network nodes kept FP32 (linear attention, exact upsampling); '
          'input normalization and the output head untouched')
    print(f'  calibration: {report.frames} frames from {source} through the node preprocessing '
          f'({cfg.input.resize_mode}, {cfg.input.interpolation}), {report.calib_method}; {report.seconds:.1f} s')
    print(f'  INT8 vs FP32 labels on the calibration frames: {100 * report.label_agreement:.2f}% agree '
          '(measure held-out accuracy with `evit-ros eval --onnx ...`)')
    print(f'  on the Jetson: evit-ros build-engine --onnx {report.path} --precision int8 (explicitly quantized: '
          f'no calibration there), then evit-ros verify-engine --engine ENGINE --onnx {report.path} ...')
    return 0
