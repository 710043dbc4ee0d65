"""The batching policy: chunk sizes chosen from measured costs per run (CPU-like and GPU-like fake cost models),
the latency budget, the engine's opt batch, the cost model's medians and probes, and calibration timing a backend."""
from __future__ import annotations

import time

import numpy as np
import pytest

from evit_ros.inference import InferenceBackend, InferenceResult, ModelIO, TensorSpec
from evit_ros.pipeline.batching import (
    PROBE_EVERY,
    BatchPolicy,
    CostModel,
    calibrate,
    choose_batch,
    chunk_sizes,
    completion_ms,
)

# ms per run of 1..4 frames, measured on the 2-core box (issue 25): per frame 10.4/8.9/8.9/8.7 quiet
CPU_QUIET = {1: 10.4, 2: 17.8, 3: 26.7, 4: 34.8}
CPU_LOADED = {1: 18.7, 2: 45.0, 3: 71.7, 4: 96.4}       # 18.7/22.5/23.9/24.1 ms per frame under load
GPU = {1: 4.0, 2: 4.2, 3: 4.5, 4: 4.7}                  # a run of 4 costs about a run of 1


def test_chunks_and_completion_times() -> None:
    assert chunk_sizes(5, 2) == [2, 2, 1] and chunk_sizes(4, 4) == [4] and chunk_sizes(3, 1) == [1, 1, 1]
    # one at a time: frames done at 10, 20, 30, 40 -> mean 25; one run of 4: all at 34.8
    assert completion_ms({1: 10.0}, 4, 1) == (25.0, 40.0)
    assert completion_ms(CPU_QUIET, 4, 4) == (34.8, 34.8)
    assert completion_ms({1: 10.0, 2: 18.0}, 3, 2) == pytest.approx(((2 * 18 + 28) / 3, 28.0))


def test_cpu_costs_run_frames_one_at_a_time() -> None:
    for costs in (CPU_QUIET, CPU_LOADED):
        d = choose_batch(costs, ready=4, budget_ms=100.0, max_batch=4)
        assert d.batch == 1, d
        assert d.mean_ms == pytest.approx(2.5 * costs[1]) and set(d.options) == {1, 2, 3, 4}


def test_gpu_costs_run_full_batches() -> None:
    d = choose_batch(GPU, ready=4, budget_ms=100.0, max_batch=4)
    assert d.batch == 4 and d.last_ms == 4.7
    assert choose_batch(GPU, ready=3, budget_ms=100.0, max_batch=4).batch == 3     # never above what waits
    assert choose_batch(GPU, ready=8, budget_ms=100.0, max_batch=4).batch == 4     # never above the engine's max


def test_engine_opt_batch_is_respected() -> None:
    d = choose_batch(GPU, ready=4, budget_ms=100.0, max_batch=4, opt_batch=2)
    assert d.batch == 2 and set(d.options) == {1, 2} and 'opt batch 2' in d.reason


def test_budget_prefers_the_size_that_finishes_the_set_in_time() -> None:
    # one at a time has the lower mean (25 vs 36) but the last frame (40 ms) misses a 38 ms budget; 4 at once fits
    costs = {1: 10.0, 2: 19.0, 3: 28.0, 4: 36.0}
    assert choose_batch(costs, 4, budget_ms=100.0, max_batch=4).batch == 1
    d = choose_batch(costs, 4, budget_ms=37.0, max_batch=4)     # runs of 2 finish at 38: only 4 at once fits
    assert d.batch == 4 and 'within the budget' in d.reason
    # nothing fits: the size that finishes the set soonest (the most throughput)
    d = choose_batch(costs, 4, budget_ms=5.0, max_batch=4)
    assert d.batch == 4 and 'soonest' in d.reason


def test_no_measurement_means_one_frame_per_run() -> None:
    d = choose_batch({}, 4, 100.0, 4)
    assert d.batch == 1 and 'no measured cost' in d.reason


def test_cost_model_median_and_probe_of_stale_sizes() -> None:
    m = CostModel(4)
    for ms in (10.0, 11.0, 50.0):
        m.add(1, ms)
    m.add(9, 1.0)                      # not a size of this engine: ignored
    assert m.costs() == {1: 11.0}
    m = CostModel(4)
    for b, ms in CPU_QUIET.items():
        m.add(b, ms)
    policy = BatchPolicy(4, 100.0)
    policy.model = m
    assert policy.decide(4).batch == 1
    for _ in range(PROBE_EVERY):      # only size 1 runs: sizes 2..4 become stale and are probed, oldest first
        m.add(1, 10.0)
    d = policy.decide(4)
    assert d.batch == 2 and d.reason.startswith('probe')
    assert policy.last is not None and policy.last.batch == 1     # diagnostics keep the policy's own choice
    values = policy.describe()
    assert values['batching.batch_size'] == '1' and values['batching.cost_ms.b4'] == '34.80'
    assert values['batching.per_frame_ms.b4'] == '8.70' and values['batching.max_batch'] == '4'


class _TimedBackend(InferenceBackend):
    """A fake engine whose run of n frames takes ``base + per_frame * n`` seconds: a cost model without a GPU."""

    name = 'fake'

    def __init__(self, base_s: float, per_frame_s: float, static: int = 0) -> None:
        super().__init__()
        self.base_s, self.per_frame_s = base_s, per_frame_s
        shape = (static or -1, 8, 8, 3)
        self._io = ModelIO('fake', 'labels', 'uint8-nhwc', TensorSpec('image', shape, 'uint8'),
                           (TensorSpec('labels', (static or -1, 8, 8), 'uint8'),), max_batch=static or 4)
        self.sizes: list[int] = []

    def load(self) -> None:
        self._loaded = True

    @property
    def io(self) -> ModelIO:
        return self._io

    def infer(self, batch: np.ndarray) -> InferenceResult:
        self.sizes.append(batch.shape[0])
        time.sleep(self.base_s + self.per_frame_s * batch.shape[0])
        return InferenceResult(labels=np.zeros((batch.shape[0], 8, 8), np.uint8))


def test_calibrate_times_every_size_and_the_policy_follows() -> None:
    gpu_like = _TimedBackend(0.040, 0.0005)
    m = CostModel(4)
    calibrate(gpu_like, m, reps=2)
    assert sorted(set(gpu_like.sizes)) == [1, 2, 3, 4]
    d = choose_batch(m.costs(), 4, 1000.0, 4)
    assert d.batch == 4, d
    cpu_like = _TimedBackend(0.0, 0.020)      # a sleep's overshoot on a loaded machine stays well below 20 ms
    m = CostModel(4)
    calibrate(cpu_like, m, reps=2)
    d = choose_batch(m.costs(), 4, 1000.0, 4)
    assert d.batch == 1, d
    static = _TimedBackend(0.002, 0.0, static=2)      # a static batch runs its one size whatever the chunk
    m = CostModel(2)
    calibrate(static, m, reps=1)
    assert set(static.sizes) == {2} and set(m.costs()) == {1, 2}
