"""What each graph head costs as a share of the network on ONNX Runtime: ``python -m evit_ros.bench.heads``.

The head is everything after the 1/8 logits (bicubic upsampling to the input size and the argmax for
``labels``). The ``logits`` graph is the network alone, so a head costs median(head graph) - median(logits
graph), reported as a percentage of median(logits graph). Every graph is the cached, verified export the
node would use (same model, checkpoint and size), run through the node's ONNX Runtime backend (same session
options, spin-wait off), interleaved round by round on the same held-out synthetic frame (the order reverses
every round), so all graphs see the same machine load; only ratios within one run are meaningful on a shared
machine. Prints a table and writes JSON (``--json``).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

import numpy as np

from evit_ros import contract
from evit_ros.bench import loadavg, write_json
from evit_ros.config import DEFAULT_MODEL, InputConfig, ModelConfig
from evit_ros.errors import ConfigError, EvitError

log = logging.getLogger(__name__)

NETWORK = 'logits'                       # the graph without a head
DEFAULT_HEADS = ('labels', 'labels+logits')
TARGET_PCT = 15.0                        # issue 17: a head should cost at most this share of the network



def _parse_heads(text: str) -> tuple[str, ...]:
    heads = tuple(dict.fromkeys(h.strip() for h in text.split(',') if h.strip()))
    valid = [h for h in contract.HEADS if h != NETWORK]
    bad = [h for h in heads if h not in valid]
    if not heads or bad:
        raise ConfigError(f'--heads {text!r} is not valid; give a comma-separated list of {", ".join(valid)}')
    return heads


def run_head_benchmark(*, model: ModelConfig, hw: tuple[int, int], heads: tuple[str, ...] = DEFAULT_HEADS,
                       rounds: int = 30, warmup: int = 3, threads: int = 2) -> dict:
    """Per-graph latency (median, p10, p90 ms) and per-head cost (ms and % of the logits graph)."""
    from evit_ros.backends import ensure_onnx, resolve_checkpoint
    from evit_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
    from evit_ros.synthetic.scenes import generate_scene
    from evit_ros.synthetic.train import HELDOUT_SEED_BASE

    if rounds < 1 or warmup < 0 or threads < 0:
        raise ConfigError(f'rounds={rounds}, warmup={warmup}, threads={threads}: need rounds >= 1, warmup >= 0, '
                          'threads >= 0 (0: ONNX Runtime default)')
    input_cfg = InputConfig(height=hw[0], width=hw[1])
    checkpoint = resolve_checkpoint(model, log)
    names = (NETWORK, *[h for h in heads if h != NETWORK])
    backends = {}
    try:
        for name in names:
            path = ensure_onnx(model, input_cfg, name, checkpoint=checkpoint, logger=log)
            backend = OnnxRuntimeBackend(path, threads=threads, device='cpu')
            backend.load()
            backends[name] = backend
        frame = np.ascontiguousarray(generate_scene(HELDOUT_SEED_BASE, *hw)[0][None])
        for _ in range(warmup):
            for backend in backends.values():
                backend.infer(frame)
        load_before = loadavg()
        samples: dict[str, list[float]] = {name: [] for name in names}
        order = list(names)
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                t0 = time.perf_counter()
                backends[name].infer(frame)
                samples[name].append((time.perf_counter() - t0) * 1e3)
        load_after = loadavg()
        providers = backends[NETWORK].describe().get('providers', '')
    finally:
        for backend in backends.values():
            backend.close()
    graphs: dict[str, dict[str, Any]] = {
        name: {'median_ms': round(float(np.median(v)), 3), 'p10_ms': round(float(np.percentile(v, 10)), 3),
               'p90_ms': round(float(np.percentile(v, 90)), 3), 'samples_ms': [round(x, 3) for x in v]}
        for name, v in samples.items()}
    net = float(graphs[NETWORK]['median_ms'])
    head_cost = {}
    for name in names[1:]:
        ms = float(graphs[name]['median_ms']) - net
        pct = round(100.0 * ms / net, 2)
        lo, hi = cost_interval_pct(samples[name], samples[NETWORK])
        verdict = target_verdict(lo, hi, TARGET_PCT)
        head_cost[name] = {'head_ms': round(ms, 3), 'head_pct_of_network': pct, 'interval_pct': [lo, hi],
                           'verdict': verdict, 'target_met': {'met': True, 'not met': False}.get(verdict)}
    import onnxruntime as ort
    return {'model': model.name, 'checkpoint': checkpoint, 'input_hw': list(hw), 'threads': threads,
            'rounds': rounds, 'warmup': warmup, 'onnxruntime': ort.__version__, 'providers': providers,
            'load_average_before': load_before, 'load_average_after': load_after, 'target_pct': TARGET_PCT,
            'graphs': graphs, 'heads': head_cost}


INTERVAL = 90.0            # the cost interval printed beside each head: a 90 % bootstrap interval of the median
BOOTSTRAP = 2000


def cost_interval_pct(head_ms: list[float], network_ms: list[float], seed: int = 0) -> tuple[float, float]:
    """A 90 % interval of the head's cost in % of the network: bootstrap of the median paired difference.

    Round ``r`` of the head and of the network ran next to each other, so their difference cancels most of the
    machine's drift; resampling rounds shows how much the median still moves. A spread wider than the effect
    makes the verdict inconclusive instead of a pass.
    """
    head, net = np.asarray(head_ms, np.float64), np.asarray(network_ms, np.float64)
    n = min(head.size, net.size)
    if n < 2:
        return float('-inf'), float('inf')
    diff = head[:n] - net[:n]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (BOOTSTRAP, n))
    meds = np.median(diff[idx], axis=1) / float(np.median(net[:n])) * 100.0
    tail = (100.0 - INTERVAL) / 2
    return round(float(np.percentile(meds, tail)), 2), round(float(np.percentile(meds, 100.0 - tail)), 2)


def target_verdict(lo: float, hi: float, target: float) -> str:
    """``met`` when the whole interval is at or under the target, ``not met`` when all of it is above,
    else ``inconclusive`` (noise larger than the difference: repeat with more rounds, or on a quieter machine)."""
    if hi <= target:
        return 'met'
    if lo > target:
        return 'not met'
    return 'inconclusive'


def format_table(report: dict) -> str:
    h, w = report['input_hw']
    lines = [f"{report['model']} {h}x{w}, ONNX Runtime {report['onnxruntime']}, {report['threads']} threads, "
             f"{report['rounds']} interleaved rounds, load average {report['load_average_before']} -> "
             f"{report['load_average_after']}",
             f"{'graph':<20}{'median ms':>10}{'p10':>9}{'p90':>9}{'head ms':>9}{'% of network':>14}"
             f"{'90 % interval':>20}  verdict (target <= {report['target_pct']:.0f} %)"]
    for name, g in report['graphs'].items():
        cost = report['heads'].get(name)
        extra = f"{'-':>9}{'-':>14}"
        if cost:
            lo, hi = cost['interval_pct']
            extra = (f"{cost['head_ms']:>9.2f}{cost['head_pct_of_network']:>13.1f}%"
                     f"{f'{lo:.1f} .. {hi:.1f} %':>20}  {cost['verdict']}")
        lines.append(f"{name:<20}{g['median_ms']:>10.2f}{g['p10_ms']:>9.2f}{g['p90_ms']:>9.2f}{extra}")
    by = {v: [n for n, c in report['heads'].items() if c['verdict'] == v] for v in ('met', 'not met', 'inconclusive')}
    lines.append(f"heads at <= {report['target_pct']:.0f} % of the network: {', '.join(by['met']) or 'none'}"
                 + (f"; not met: {', '.join(by['not met'])}" if by['not met'] else '')
                 + (f"; inconclusive (the interval spans the target: repeat with more --rounds or on a quieter "
                    f"machine): {', '.join(by['inconclusive'])}" if by['inconclusive'] else ''))
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m evit_ros.bench.heads',
                                description='Cost of each graph head as a share of the network (ONNX Runtime).')
    p.add_argument('--model', default=DEFAULT_MODEL, help=f'zoo name (default {DEFAULT_MODEL})')
    p.add_argument('--checkpoint', default='', help='weights (default: official on the search path, else the demo)')
    p.add_argument('--height', type=int, default=512, help='network input height (multiple of 32, default 512)')
    p.add_argument('--width', type=int, default=1024, help='network input width (multiple of 32, default 1024)')
    p.add_argument('--heads', default=','.join(DEFAULT_HEADS),
                   help=f'comma-separated heads compared with the logits graph (default {",".join(DEFAULT_HEADS)})')
    p.add_argument('--rounds', type=int, default=30, help='timed interleaved rounds (default 30)')
    p.add_argument('--warmup', type=int, default=3, help='untimed rounds first (default 3)')
    p.add_argument('--threads', type=int, default=2, help='ONNX Runtime intra-op threads (default 2; 0: default)')
    p.add_argument('--json', default='', help='write the report to this JSON file')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        report = run_head_benchmark(model=ModelConfig(name=args.model, checkpoint=args.checkpoint),
                                    hw=(args.height, args.width), heads=_parse_heads(args.heads),
                                    rounds=args.rounds, warmup=args.warmup, threads=args.threads)
    except EvitError as exc:
        sys.stderr.write(f'evit_ros.bench.heads: {exc}\n')
        return 2
    sys.stdout.write(format_table(report) + '\n')
    write_json(args.json, report)
    return 0


if __name__ == '__main__':
    sys.exit(main())
