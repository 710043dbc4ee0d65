"""``evit-ros play``: publish a bag or a folder of images as camera topics (no ``ros2`` needed)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('source', help='a bag (.mcap file or rosbag2 folder), or a folder of PNG/JPEG frames '
                                       '(one camera; or one camera per sub-folder of images)')
    parser.add_argument('--rate', type=float, default=10.0,
                        help='folders: frames per second per camera (default 10)')
    parser.add_argument('--speed', type=float, default=1.0,
                        help='bags: factor on the recorded pace (default 1.0, as recorded)')
    parser.add_argument('--loop', action='store_true', help='start again at the end (until Ctrl-C)')
    parser.add_argument('--clock', action='store_true',
                        help='publish /clock (bags: the log time, for a node with use_sim_time; folders: the send '
                             'time)')
    parser.add_argument('--topic', default='',
                        help='folders of one camera: its image topic (default /<folder name>/image_raw)')
    parser.add_argument('--best-effort', action='store_true', help='best-effort publishers (default reliable)')
    parser.add_argument('--wait', type=float, default=10.0,
                        help='seconds to wait for a subscriber on every image topic first (default 10; 0: none)')
    parser.add_argument('--max-frames', type=int, default=0, help='stop after this many image frames (0: all)')
    parser.add_argument('--duration', type=float, default=0.0, help='stop after this many seconds (0: no limit)')


def run(args: argparse.Namespace) -> int:
    from evit_ros.ros.play import PlayOptions, play
    options = PlayOptions(rate_hz=args.rate, speed=args.speed, loop=args.loop, clock=args.clock, topic=args.topic,
                          best_effort=args.best_effort, wait_s=args.wait, max_frames=args.max_frames,
                          duration_s=args.duration)
    stats = play(args.source, options)
    per_topic = ', '.join(f'{t} {n}' for t, n in sorted(stats.frames.items())) or 'none'
    rate = stats.total / stats.seconds if stats.seconds > 0 else 0.0
    print(f'played {stats.total} frames in {stats.seconds:.1f} s ({rate:.1f} frames/s'
          + (f', {stats.loops} loops' if args.loop else '') + f'): {per_topic}'
          + (' (interrupted)' if stats.interrupted else ''))
    return 0 if stats.total else 1
