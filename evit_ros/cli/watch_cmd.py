"""``evit-ros watch``: the node's outputs and diagnostics, seen from outside (no ``ros2`` needed)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--prefix', default='/segmentation',
                        help="the node's output prefix (default /segmentation; with a namespace /car1/segmentation)")
    parser.add_argument('--all', dest='all_outputs', action='store_true',
                        help='also subscribe to colour masks, overlays, confidence and drivable masks (the node '
                             'then computes them); default: the class masks only')
    parser.add_argument('--duration', type=float, default=0.0, help='seconds to watch (default 0: until Ctrl-C)')
    parser.add_argument('--interval', type=float, default=2.0, help='seconds between reports (default 2)')
    parser.add_argument('--save', default='', metavar='DIR',
                        help="write a few of each camera's overlays as PNG into DIR (then stop subscribing them)")
    parser.add_argument('--save-count', type=int, default=3, help='overlays per camera with --save (default 3)')
    parser.add_argument('--use-sim-time', action='store_true',
                        help='measure latency on /clock (when the node runs with use_sim_time)')


def run(args: argparse.Namespace) -> int:
    from evit_ros.ros.watch import WatchOptions, watch
    options = WatchOptions(prefix=args.prefix, all_outputs=args.all_outputs, duration_s=args.duration,
                           interval_s=args.interval, save_dir=args.save, save_count=args.save_count,
                           use_sim_time=args.use_sim_time)
    result = watch(options)
    total = sum(result.messages.values())
    print(f'received {total} messages: ' + (', '.join(f'{t} {n}' for t, n in sorted(result.messages.items()))
                                              or f'none under {args.prefix}'))
    if result.saved:
        print(f'saved {len(result.saved)} overlays in {args.save}')
    return 0 if total else 1
