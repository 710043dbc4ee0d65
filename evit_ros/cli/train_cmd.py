"""``evit-ros train-synthetic``: train the demo model on generated driving scenes (CPU, deterministic)."""
from __future__ import annotations

import argparse

DEFAULT_OUT = 'evit_ros/data/efficientvit_seg_b0_synthetic.pt'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', default=DEFAULT_OUT, help=f'checkpoint path (default {DEFAULT_OUT})')
    parser.add_argument('--seed', type=int, default=0, help='training seed: weights init and scene seeds (default 0)')
    parser.add_argument('--steps', type=int, default=3000, help='optimizer steps (default 3000)')
    parser.add_argument('--batch', type=int, default=8, help='scenes per step (default 8)')
    parser.add_argument('--height', type=int, default=256, help='training height, multiple of 32 (default 256)')
    parser.add_argument('--width', type=int, default=512, help='training width, multiple of 32 (default 512)')
    parser.add_argument('--lr', type=float, default=3e-3, help='peak AdamW learning rate (default 3e-3)')
    parser.add_argument('--class-weight-power', type=float, default=0.25,
                        help='loss weight (median freq / freq) ** power; 0 = unweighted (default 0.25)')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads (default 2)')
    parser.add_argument('--eval-every', type=int, default=100, help='held-out evaluation/checkpoint period (steps)')
    parser.add_argument('--eval-scenes', type=int, default=16, help='held-out scenes per evaluation (default 16)')
    parser.add_argument('--log', default='', help='append JSON lines (loss, held-out mIoU) to this file')
    parser.add_argument('--resume', default='', help='start from this checkpoint instead of random init')


def run(args: argparse.Namespace) -> int:
    from evit_ros.synthetic.train import TrainConfig, train
    cfg = TrainConfig(out=args.out, seed=args.seed, steps=args.steps, batch=args.batch, height=args.height,
                      width=args.width, lr=args.lr, class_weight_power=args.class_weight_power, threads=args.threads,
                      eval_every=args.eval_every,
                      eval_scenes=args.eval_scenes, log=args.log, resume=args.resume)
    result = train(cfg, progress=lambda m: print(m, flush=True))
    final = result['final'] or {}
    print(f'checkpoint {result["checkpoint"]}: held-out mIoU {final.get("heldout_miou", float("nan")):.3f} '
          f'after {result["wall_time_s"]:.0f} s')
    return 0
