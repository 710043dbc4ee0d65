"""Frames lost before the callback, estimated from header stamp gaps, and rates over a stated window."""
from __future__ import annotations

import numpy as np
import pytest

from evit_ros.ros.rates import MIN_INTERVALS, PAUSE_S, RateWindow, StampGaps, missing_in_gap

MS = 1_000_000


def _feed(gaps: StampGaps, stamps_ms: list[float]) -> int:
    return sum(gaps.add(int((1000.0 + s) * MS)) for s in stamps_ms)   # a zero stamp would be skipped


def test_a_gap_of_k_periods_is_k_minus_one_missing() -> None:
    assert [missing_in_gap(g * 100.0, 100.0) for g in (1, 1.4, 1.6, 2, 3, 10)] == [0, 0, 1, 1, 2, 9]
    g = StampGaps()
    stamps = [i * 100.0 for i in range(40) if i not in (12, 20, 21, 22, 30)]
    assert _feed(g, stamps) == 5 and g.missing == 5
    assert g.period_ns() == pytest.approx(100 * MS) and g.rate_hz == pytest.approx(10.0)


def test_jitter_and_heavy_loss_do_not_fool_the_period() -> None:
    g = StampGaps()
    jitter = [0, 7, -6, 3, -8, 5, 0, -3]
    kept = [1000.0 + i * 100.0 + jitter[i % 8] for i in range(199) if i % 2 == 0 or i % 7 == 0]   # 43 % lost
    _feed(g, kept)
    assert abs(g.missing - (199 - len(kept))) <= 1 and g.period_ns() == pytest.approx(100 * MS, rel=0.1)


@pytest.mark.parametrize(('loss', 'expected_ms', 'tolerance'), [
    (0.5, None, 0.03), (0.6, None, 0.03), (0.5, 100.0, 0.02), (0.7, 100.0, 0.02)])
def test_random_heavy_loss_is_counted_within_a_few_percent(loss, expected_ms, tolerance) -> None:
    """Half or more of the frames lost at random (a best-effort camera over a full segment): the median interval
    is 2-3 periods and refining it gave 1.5 periods, which counted a third of the losses as frames. The shortest
    common interval, checked against every interval, is the period; a camera's own expected rate settles it."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        g = StampGaps(None if expected_ms is None else expected_ms * MS)
        keep = rng.random(600) > loss
        keep[0] = True
        idx = np.flatnonzero(keep)
        _feed(g, [float(i) * 100.0 + float(rng.normal(0.0, 3.0)) for i in idx])
        true = int(idx[-1]) + 1 - idx.size
        assert abs(g.missing - true) <= tolerance * (int(idx[-1]) + 1), (seed, g.missing, true)
        assert g.period_ns() == pytest.approx(100 * MS, rel=0.05)


def test_losses_before_the_period_is_known_are_counted_once_it_is() -> None:
    g = StampGaps()
    stamps = [0.0, 100.0, 300.0] + [400.0 + 100.0 * i for i in range(MIN_INTERVALS + 2)]
    _feed(g, stamps)
    assert g.missing == 1


def test_a_slow_camera_learns_its_own_period() -> None:
    g = StampGaps()
    stamps = [i * 500.0 for i in range(30) if i != 15]      # 2 Hz, one frame lost
    _feed(g, stamps)
    assert g.missing == 1 and g.rate_hz == pytest.approx(2.0)


def test_pauses_and_stamps_going_back_are_not_losses() -> None:
    g = StampGaps()
    stamps = [i * 100.0 for i in range(20)]
    stamps += [stamps[-1] + PAUSE_S * 1000 + 500 + i * 100.0 for i in range(10)]   # the camera paused
    stamps += [50.0 + i * 100.0 for i in range(10)]                               # a bag looped
    _feed(g, stamps)
    assert g.missing == 0 and g.pauses == 1 and g.restarts == 1
    assert g.add(0) == 0           # a zero stamp is not judged


def test_rate_window_does_not_round_a_slow_camera() -> None:
    w = RateWindow(10.0)
    for i in range(21):
        w.add(100.0 + 0.5 * i)            # 2 Hz for 10 s
    rate, window = w.rate(110.2)
    assert rate == pytest.approx(2.0) and window == pytest.approx(9.5)
    rate, window = w.rate(114.0)          # silent for 4 s: the rate falls instead of freezing
    assert rate < 1.5 and window == pytest.approx(10.0)
    assert RateWindow().rate(1.0) == (0.0, 0.0)


def test_half_the_frames_lost_for_a_while_needs_the_cameras_expected_rate() -> None:
    every_other = [i * 200.0 for i in range(30)]           # a 10 Hz camera losing every other frame
    _feed(g := StampGaps(), every_other)
    assert g.missing == 0                                  # indistinguishable from a 5 Hz camera
    _feed(g := StampGaps(expected_period_ns=100 * MS), every_other)
    assert g.missing == 29 and g.rate_hz == pytest.approx(10.0)
    _feed(g := StampGaps(expected_period_ns=100 * MS), [i * 150.0 for i in range(30)])
    assert g.missing == 0                                  # not a multiple: the camera's own rate wins


def test_a_late_frame_and_the_bunch_after_it_are_not_losses() -> None:
    # a publisher starved for 250 ms stamps the next frames late and then catches up
    stamps = [i * 100.0 for i in range(20)] + [2250.0, 2252.0, 2254.0, 2300.0]
    stamps += [2400.0 + i * 100.0 for i in range(20)]
    g = StampGaps()
    _feed(g, stamps)
    assert g.missing == 0, g.missing
    late = [i * 100.0 for i in range(20)] + [2140.0, 2145.0] + [2200.0 + i * 100.0 for i in range(20)]
    _feed(g := StampGaps(), late)    # one frame 140 ms late, the next right after it: nothing lost
    assert g.missing == 0, g.missing
    g = StampGaps()                  # a real loss stays counted
    _feed(g, [i * 100.0 for i in range(20)] + [2300.0 + i * 100.0 for i in range(20)])
    assert g.missing == 3          # 1900 -> 2300: four periods, three frames lost


def test_a_30_hz_camera_with_jittery_stamps() -> None:
    rng = np.random.default_rng(0)
    period = 1000.0 / 30
    stamps = np.arange(300) * period + rng.uniform(-0.1 * period, 0.1 * period, 300)   # early or late by 3 ms
    _feed(g := StampGaps(), list(stamps))
    assert g.missing <= 3 and g.period_ns() == pytest.approx(period * MS, rel=0.03)
    kept = [s for i, s in enumerate(stamps) if i % 10 != 5]                              # 30 lost
    _feed(g := StampGaps(), kept)
    assert abs(g.missing - 30) <= 3
