"""``evit-ros``: one command with subcommands that share the node's YAML configuration.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs, so ``evit-ros eval --help`` never imports torch.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from evit_ros.errors import EvitError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    'export': ('evit_ros.cli.export_cmd', 'export a model to a verified ONNX graph'),
    'build-engine': ('evit_ros.cli.build_engine_cmd', 'build a cached TensorRT engine from an ONNX graph'),
    'quantize': ('evit_ros.cli.quantize_cmd', 'explicit INT8: a Q/DQ ONNX calibrated on camera frames'),
    'verify-engine': ('evit_ros.cli.verify_engine_cmd', 'check an engine against ONNX Runtime on real frames'),
    'bench': ('evit_ros.cli.bench_cmd', 'benchmark a backend and the pipeline stages'),
    'eval': ('evit_ros.cli.eval_cmd', 'evaluate mIoU, drivable IoU and latency on ROS 2 bags'),
    'generate-synthetic': ('evit_ros.cli.synthetic_cmd', 'write synthetic driving scenes and a bag'),
    'train-synthetic': ('evit_ros.cli.train_cmd', 'train the demo model on synthetic scenes'),
    'demo': ('evit_ros.cli.demo_cmd', 'run the whole system on synthetic scenes'),
    'play': ('evit_ros.cli.play_cmd', 'publish a bag or a folder of images as camera topics (no ros2 needed)'),
    'watch': ('evit_ros.cli.watch_cmd', "print the node's output rates, latency and diagnostics (no ros2 needed)"),
    'doctor': ('evit_ros.cli.doctor_cmd', 'what this machine can run (ROS, runtimes, CUDA, GPU, engines) and why not'),
}


def _peek_command(argv: list[str]) -> str | None:
    for arg in argv:
        if not arg.startswith('-'):
            return arg
    return None


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='evit-ros', description=__doc__.splitlines()[0])
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    wanted = _peek_command(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='[%(levelname)s] %(name)s: %(message)s')
    if not getattr(args, '_run', None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except EvitError as exc:
        print(f'evit-ros {args.command}: error: {exc}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f'evit-ros {args.command}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
