"""``evit-ros generate-synthetic``: write held-out synthetic scenes as PNGs and a ROS 2 bag (MCAP)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', required=True, help='output folder (images/, labels/, bag/, index.json)')
    parser.add_argument('--frames', type=int, default=20, help='frames per camera (default 20)')
    parser.add_argument('--seed', type=int, default=0, help='dataset seed; scenes are disjoint from training')
    parser.add_argument('--height', type=int, default=256, help='image height in pixels (default 256)')
    parser.add_argument('--width', type=int, default=512, help='image width in pixels (default 512)')
    parser.add_argument('--rate', type=float, default=10.0, help='camera rate in Hz for the stamps (default 10)')
    parser.add_argument('--jpeg-quality', type=int, default=92, help='JPEG quality of the compressed camera')
    parser.add_argument('--no-png', action='store_true', help='write only the bag')


def run(args: argparse.Namespace) -> int:
    from evit_ros.synthetic.bag import write_synthetic
    ds = write_synthetic(args.out, frames=args.frames, seed=args.seed, height=args.height, width=args.width,
                         rate_hz=args.rate, jpeg_quality=args.jpeg_quality, write_png=not args.no_png)
    print(f'wrote {ds.frames} frames x {len(ds.cameras)} cameras ({ds.height}x{ds.width}) to {ds.root}; bag {ds.bag}')
    for c in ds.cameras:
        print(f'  {c.name}: {c.image_topic} ({c.transport}), {c.info_topic}, labels {c.label_topic}')
    return 0
