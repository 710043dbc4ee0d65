"""``evit-ros export``: a verified, self-contained ONNX graph (camera pixels in, task outputs out)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from evit_ros.contract import HEADS, INPUT_FORMATS, NODE_HEAD
from evit_ros.errors import ConfigError


def parse_hw(text: str) -> tuple[int, int]:
    """``'720x1280'`` -> (720, 1280)."""
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError as exc:
        raise ConfigError(f'--input-size {text!r} must look like HxW, e.g. 720x1280') from exc
    if h <= 0 or w <= 0:
        raise ConfigError(f'--input-size {text!r} must be positive')
    return h, w


def export_weights(model: str, checkpoint: str | None, *, random_weights: bool = False) -> str | None:
    """The weights an export uses: the node's rule (``resolve_checkpoint``), random only when asked for.

    Without ``--checkpoint`` an export must hold what the node would load for the same model, so an ONNX
    exported here and one the node exports into its cache agree; random weights silently exported by default
    would evaluate at 0 % mIoU.
    """
    if random_weights:
        return None
    from evit_ros.backends import resolve_checkpoint
    from evit_ros.config import ModelConfig
    from evit_ros.errors import CheckpointError
    if checkpoint and not Path(checkpoint).expanduser().is_file():
        raise CheckpointError(f'--checkpoint {checkpoint} does not exist; give the path of a downloaded .pt file '
                              '(or omit it to use the node\'s search path)')
    try:
        return resolve_checkpoint(ModelConfig(name=model, checkpoint=checkpoint or ''))
    except CheckpointError as exc:
        raise CheckpointError(f'{exc} (--random-weights exports random weights for graph experiments)') from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--params-file', help='node YAML (config/evit_ros.yaml) supplying model/size defaults')
    parser.add_argument('--model', help='zoo name (default: from --params-file, else efficientvit-seg-b0-cityscapes)')
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument('--checkpoint', help='weights .pt (default: as the node: the official file on the checkpoint '
                         'search path, else for b0 the packaged demo weights, with a warning)')
    weights.add_argument('--random-weights', action='store_true',
                         help='deterministic random weights (graph and engine experiments only: the output is noise)')
    parser.add_argument('--height', type=int, help='network input height, multiple of 32 (default: from '
                        '--params-file, else 512)')
    parser.add_argument('--width', type=int, help='network input width, multiple of 32 (default: from '
                        '--params-file, else 1024)')
    parser.add_argument('--input-size', type=parse_hw, metavar='HxW',
                        help='camera frame size the graph takes, resized in-graph (bicubic) to HEIGHTxWIDTH')
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument('--batch', type=int, default=1, help='static batch size (default 1)')
    batch.add_argument('--max-batch', type=int, help='dynamic batch 1..N (several cameras share one engine)')
    parser.add_argument('--head', choices=HEADS, default=NODE_HEAD,
                        help=f'graph outputs (default {NODE_HEAD}, the head the node, the demo and eval use)')
    parser.add_argument('--input-format', choices=INPUT_FORMATS, default='uint8-nhwc',
                        help='uint8 NHWC RGB camera bytes (default) or normalized float NCHW')
    parser.add_argument('--labels-dtype', choices=('uint8', 'int32'), default='uint8',
                        help='class id type (default uint8; int32 for TensorRT versions without UINT8 outputs)')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset (default 17: TensorRT 8.6 / JetPack 6)')
    parser.add_argument('--mixed-precision-fp16', action='store_true',
                        help='fp16 network with fp32 attention via explicit Casts (for strongly typed TensorRT '
                             '11 / RTX fp16 builds)')
    parser.add_argument('-o', '--output', required=True, help='output .onnx file')


def run(args: argparse.Namespace) -> int:
    from evit_ros.config import load_config
    from evit_ros.export.onnx_export import export_onnx

    cfg = load_config(args.params_file or None)   # without a YAML: the node's defaults (b0, 512x1024)
    model = args.model or cfg.model.name
    checkpoint = args.checkpoint or (cfg.model.checkpoint if cfg.model.checkpoint and not args.model else None)
    height = args.height or cfg.input.height
    width = args.width or cfg.input.width
    checkpoint = export_weights(model, checkpoint, random_weights=args.random_weights)
    t0 = time.perf_counter()
    report = export_onnx(model, args.output, height=height, width=width, checkpoint=checkpoint,
                         input_size=args.input_size, batch=args.batch, max_batch=args.max_batch, head=args.head,
                         input_format=args.input_format, labels_dtype=args.labels_dtype, opset=args.opset,
                         verify=True, mixed_precision_fp16=args.mixed_precision_fp16)
    batch = f'dynamic 1..{args.max_batch}' if args.max_batch else f'static {args.batch}'
    weights = checkpoint or 'deterministic random weights (--random-weights)'
    print(f'exported {model} ({height}x{width}, head {args.head}, {args.input_format}, batch {batch}, '
          f'opset {args.opset}) -> {report.path}')
    print(f'  weights: {weights}')
    print(f'  verified: onnx.checker ok; ORT vs PyTorch logits max rel error {report.max_rel_logits_error:.2e}, '
          f'labels agree {100 * report.label_agreement:.4f}%'
          + ('' if report.confidence_max_abs_diff is None
             else f', confidence max |diff| {report.confidence_max_abs_diff}'))
    print(f'  {len(report.fp32_nodes)} attention nodes recorded for FP32; '
          f'export {report.export_seconds:.1f} s, verify {report.verify_seconds:.1f} s, '
          f'total {time.perf_counter() - t0:.1f} s')
    return 0
