"""How many of the frames waiting go into one engine run: chosen from the engine's measured cost per run.

Why: batching pays only where one run of n frames costs much less than n runs of one. On a GPU a run of 4
costs about what a run of 1 does, so a full batch finishes every frame sooner; on a CPU a run of 4 costs
nearly 4 runs of 1 (measured on the 2-core box: 10.4/8.9/8.9/8.7 ms per frame quiet, 18.7/22.5/23.9/24.1 ms
under load), so running frames one at a time publishes the first mask after one frame's inference instead of
four. The policy compares, for the frames waiting now, the mean time until each frame's inference is done for
every chunk size (chunks run back to back), and picks the lowest among the sizes that finish the whole set
within the latency budget (when none does, the size that finishes it soonest: the most throughput). Sizes
above the engine's opt batch (a TensorRT profile's tuned size) are not used.

The costs are measured, not assumed: :class:`CostModel` takes each run's time per size (the node calibrates
every size once at start, then every run adds its own); a size not run for :data:`PROBE_EVERY` runs is run once
more, so the model follows the machine's load. Pure Python/numpy, no ROS, no runtime: the policy is tested with
made-up costs (a GPU-like and a CPU-like model).
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from evit_ros.inference import InferenceBackend

SAMPLES = 16        # recent runs per size the cost is the median of
PROBE_EVERY = 64    # runs after which a candidate size not used since is run once more


def chunk_sizes(n: int, batch: int) -> list[int]:
    """``n`` frames in chunks of ``batch`` (the last one smaller): 5, 2 -> [2, 2, 1]."""
    batch = max(1, int(batch))
    return [min(batch, n - i) for i in range(0, n, batch)]


def completion_ms(costs: Mapping[int, float], n: int, batch: int) -> tuple[float, float]:
    """(mean, last) time until each of ``n`` frames is inferred, with chunks of ``batch`` run back to back."""
    t = total = 0.0
    for size in chunk_sizes(n, batch):
        t += costs[size]
        total += size * t
    return total / max(1, n), t


@dataclass(frozen=True)
class BatchDecision:
    """The chosen chunk size for ``ready`` frames, with the numbers it was chosen from."""

    batch: int
    ready: int
    mean_ms: float
    last_ms: float
    reason: str
    options: dict[int, tuple[float, float]] = field(default_factory=dict)   # size -> (mean, last)


def choose_batch(costs: Mapping[int, float], ready: int, budget_ms: float, max_batch: int,
                 opt_batch: int | None = None) -> BatchDecision:
    """The chunk size for ``ready`` frames from ``costs`` (ms per run of each size; sizes missing are skipped)."""
    ready = max(1, int(ready))
    limit = max(1, min(int(max_batch), int(opt_batch) if opt_batch else int(max_batch), ready))
    options: dict[int, tuple[float, float]] = {}
    for b in range(1, limit + 1):
        if all(s in costs for s in set(chunk_sizes(ready, b))):
            options[b] = completion_ms(costs, ready, b)
    if not options:
        return BatchDecision(1, ready, float('nan'), float('nan'), 'no measured cost yet: one frame per run')
    fitting = {b: v for b, v in options.items() if v[1] <= budget_ms}
    if fitting:
        b = min(fitting, key=lambda k: (fitting[k][0], -k))
        reason = 'lowest mean latency of the sizes that finish the set within the budget'
    else:
        b = min(options, key=lambda k: (options[k][1], -k))
        reason = 'no size finishes the set within the budget: the one that finishes it soonest'
    if opt_batch and opt_batch < min(max_batch, ready):
        reason += f' (sizes above the engine\'s opt batch {opt_batch} not used)'
    return BatchDecision(b, ready, options[b][0], options[b][1], reason, options)


class CostModel:
    """Measured time per engine run (ms) for each batch size 1..``max_batch``: the median of the recent runs."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max(1, int(max_batch))
        self._samples: dict[int, deque[float]] = {b: deque(maxlen=SAMPLES) for b in range(1, self.max_batch + 1)}
        self._last_run: dict[int, int] = {}
        self.runs = 0

    def add(self, size: int, ms: float) -> None:
        if size in self._samples and ms >= 0:
            self._samples[size].append(float(ms))
            self.runs += 1
            self._last_run[size] = self.runs

    def costs(self) -> dict[int, float]:
        return {b: float(np.median(np.fromiter(s, float, len(s)))) for b, s in self._samples.items() if s}

    def stale(self, ready: int, opt_batch: int | None = None) -> int | None:
        """A size usable for ``ready`` frames that has not run for :data:`PROBE_EVERY` runs (the oldest), or None."""
        limit = min(self.max_batch, int(opt_batch) if opt_batch else self.max_batch, ready)
        old = [b for b in range(1, limit + 1) if self.runs - self._last_run.get(b, 0) >= PROBE_EVERY]
        return min(old, key=lambda b: self._last_run.get(b, 0)) if old else None


class BatchPolicy:
    """The node's batching: :func:`choose_batch` over a :class:`CostModel`, with a periodic probe of stale sizes."""

    def __init__(self, max_batch: int, budget_ms: float, opt_batch: int | None = None) -> None:
        self.model = CostModel(max_batch)
        self.budget_ms = float(budget_ms)
        self.opt_batch = opt_batch
        self.last: BatchDecision | None = None

    def decide(self, ready: int) -> BatchDecision:
        probe = self.model.stale(ready, self.opt_batch) if self.model.runs >= PROBE_EVERY else None
        d = choose_batch(self.model.costs(), ready, self.budget_ms, self.model.max_batch, self.opt_batch)
        if probe is not None and probe != d.batch:
            d = BatchDecision(probe, ready, float('nan'), float('nan'), f'probe: size {probe} re-measured '
                              f'(not run for {PROBE_EVERY} runs)', d.options)
        else:
            self.last = d
        return d

    def describe(self) -> dict[str, str]:
        """Key/values for diagnostics: the costs per size, per frame, and the last choice with its reason."""
        costs = self.model.costs()
        out = {'batching.policy': 'measured cost per run; lowest mean latency within diagnostics.latency_budget_ms',
               'batching.max_batch': str(self.model.max_batch),
               'batching.opt_batch': str(self.opt_batch or 'none')}
        for b, ms in sorted(costs.items()):
            out[f'batching.cost_ms.b{b}'] = f'{ms:.2f}'
            out[f'batching.per_frame_ms.b{b}'] = f'{ms / b:.2f}'
        d = self.last
        if d is not None:
            out['batching.batch_size'] = str(d.batch)
            out['batching.ready'] = str(d.ready)
            out['batching.expected_mean_ms'] = f'{d.mean_ms:.2f}'
            out['batching.expected_last_ms'] = f'{d.last_ms:.2f}'
            out['batching.reason'] = d.reason
        return out


def calibrate(backend: InferenceBackend, model: CostModel, reps: int = 3) -> None:
    """Time ``reps`` runs of zeros at every batch size the engine takes (after its warmup) into ``model``.

    A static batch dimension runs its one size whatever the chunk (the segmenter pads), so every size gets its cost.
    """
    spec, static = backend.io.input, backend.io.static_batch
    for b in ([static] if static else range(1, model.max_batch + 1)):
        dummy = np.zeros((b, *spec.shape[1:]), dtype=np.dtype(spec.dtype))
        backend.infer(dummy)   # the first run of a shape may plan memory
        for _ in range(max(1, reps)):
            t0 = time.perf_counter()
            backend.infer(dummy)
            ms = (time.perf_counter() - t0) * 1e3
            for size in (range(1, model.max_batch + 1) if static else (b,)):
                model.add(size, ms)


__all__ = ['BatchDecision', 'BatchPolicy', 'CostModel', 'PROBE_EVERY', 'calibrate', 'choose_batch', 'chunk_sizes',
           'completion_ms']
