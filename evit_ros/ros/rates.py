"""Per-camera rates over a stated window, and frames the transport lost, estimated from header stamp gaps.

Why a module of its own: the node can count what it drops itself (a frame replaced in its mailbox), but a frame
the DDS reader history replaced or never completed never reaches the callback, and nothing (the
``message_lost`` event included, which Fast DDS raises for few of them) counts it. Cameras stamp frames at a
regular period, so a gap of k periods between consecutive stamps means k - 1 frames went missing on the way.
No rclpy here: the camera statistics (:mod:`evit_ros.ros.diagnostics`) feed it from the subscription callback.

The period is learned from the stamps themselves, so a 2 Hz camera beside 30 Hz ones needs no configuration: the
median interval is a first guess (intervals under a third of it, frames bunched after a stall, are left out),
every interval divided by its multiple of the guess is one estimate of the period, and their median is the period.
When a fifth of the intervals sit at half that period, more than half the frames are being lost and the period is
the half. A period that is no whole multiple of the shortest common interval (the median of frames lost at random,
two and three periods, refines to 1.5) gives way to that interval when every interval is a whole number of it;
and a camera's own expected period wins whenever every interval is a whole number of it. Stamps are expected to be
capture times (a driver's, or a clock in step with the camera): jitter of a
tenth of a period is fine, a publisher that stamps when it gets to send under heavy load is not. A frame stamped
late looks like a gap, and the frames after it come bunched, so gaps are not judged one by one: intervals are
summed until a frame lands on the period's grid again (the sum within a quarter period of a whole number of
periods, after an interval of at least 3/4 of a period), and the periods in the sum minus the frames in it are the
missing ones. Where every recent interval is two or more periods (half the frames or more lost for a while), the
stamps alone cannot tell a slower camera; a camera's own ``cameras.<cam>.expected_rate_hz`` then decides: a
learned period that is a multiple of the expected one counts the frames in between as missing. Gaps longer than
:data:`PAUSE_S` are a camera that paused (or a bag that looped), stamps that go back restart the count: neither is
reported as missing. Frames lost after the last one received (the end of a stream) cannot be seen.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

PAUSE_S = 5.0          # a longer gap is a paused or restarted camera, not lost frames
HISTORY = 64           # intervals the period is learned from
MIN_INTERVALS = 8      # intervals needed before a period is trusted
HALF_TOLERANCE = 0.2   # an interval this close to half the median-based period is a single period ...
HALF_SHARE = 0.2       # ... and when this share of the intervals are, more than half the frames are lost
BUNCHED = 1.0 / 3.0    # intervals under this share of the median are bunched frames, not periods
RELEARN = 8           # intervals between two learnings of the period
ON_GRID = 0.25         # a frame within this share of a period from the grid is on time
RATE_WINDOW_S = 10.0   # rates are frames over (at most) this many seconds
SHORT_QUANTILE = 0.1   # the shortest common interval: a low quantile, so one odd stamp does not set it
FIT_SHARE = 0.9        # a period is right when this share of the intervals are whole multiples of it ...
FIT_TOLERANCE = 0.15   # ... within this share of a period


class StampGaps:
    """Missing frames of one camera from gaps between consecutive header stamps (nanoseconds)."""

    def __init__(self, expected_period_ns: float | None = None) -> None:
        self.expected_period_ns = expected_period_ns     # from the camera's own expected rate, if set
        self.intervals: deque[int] = deque(maxlen=HISTORY)
        self.last_ns: int | None = None
        self.missing = 0
        self.pauses = 0
        self.restarts = 0
        self._unjudged: list[int] = []    # intervals seen before the period was known, judged once it is
        self._cached: float | None = None
        self._since_learn = 0
        self._held_ns = 0.0              # intervals summed since the last frame on the period's grid
        self._held_n = 0

    def period_ns(self) -> float | None:
        """The learned frame period, or None while fewer than :data:`MIN_INTERVALS` intervals are known."""
        if len(self.intervals) < MIN_INTERVALS:
            return None
        return self._learn()

    def _period_for_counting(self) -> float | None:
        """:meth:`period_ns`, relearned every :data:`RELEARN` intervals (it runs in the subscription callback)."""
        if self._cached is None or self._since_learn >= RELEARN:
            self._cached, self._since_learn = self.period_ns(), 0
        self._since_learn += 1
        return self._cached

    def _learn(self) -> float:
        a = np.fromiter(self.intervals, float, len(self.intervals))
        a = a[a >= BUNCHED * float(np.median(a))]
        period = _refine(a, float(np.median(a)))
        half = np.abs(a - period / 2) <= HALF_TOLERANCE * period / 2
        if half.sum() >= HALF_SHARE * a.size:      # single periods among mostly double ones: heavy loss
            period = _refine(a, period / 2)
        short = float(np.quantile(a, SHORT_QUANTILE))
        ratio = period / short
        if short < (1 - FIT_TOLERANCE) * period and abs(ratio - math.floor(ratio + 0.5)) > FIT_TOLERANCE:
            # a period that is no whole multiple of the shortest common interval is an artefact of heavy random
            # loss (a median of 2 or 3 periods refined to 1.5): the shortest interval is the period if all fit it
            candidate = _refine(a, short)
            if _fit_share(a, candidate) >= FIT_SHARE:
                period = candidate
        expected = self.expected_period_ns
        if expected and period > 1.5 * expected:
            k = math.floor(period / expected + 0.5)
            if abs(period - k * expected) <= 0.1 * expected:   # a whole multiple of the expected period
                return float(expected)
        if expected and abs(period - expected) > 0.1 * expected and _fit_share(a, expected) >= FIT_SHARE:
            return float(expected)   # no clean period learned, but every interval is a whole number of expected ones
        return period

    def add(self, stamp_ns: int) -> int:
        """Record the stamp of a received frame; returns the frames found missing before it (0 or more)."""
        if stamp_ns <= 0:
            return 0
        last, self.last_ns = self.last_ns, stamp_ns
        if last is None:
            return 0
        dt = stamp_ns - last
        if dt <= 0 or dt > PAUSE_S * 1e9:   # duplicate/reordered/clock back (start over), or a paused camera
            if dt <= 0:
                self.restarts += 1
            else:
                self.pauses += 1
            self._held_ns, self._held_n = 0.0, 0
            return 0
        self.intervals.append(dt)
        period = self._period_for_counting()
        if period is None:
            self._unjudged.append(dt)
            return 0
        judged = self._unjudged + [dt]
        self._unjudged = []
        found = 0
        for gap in judged:
            self._held_ns += gap
            self._held_n += 1
            periods = self._held_ns / period
            on_grid = abs(periods - math.floor(periods + 0.5)) <= ON_GRID and gap >= 0.75 * period
            if on_grid or self._held_n >= HISTORY:
                found += max(0, missing_in_gap(self._held_ns, period) + 1 - self._held_n)
                self._held_ns, self._held_n = 0.0, 0
        self.missing += found
        return found

    @property
    def rate_hz(self) -> float:
        """The stamp rate (1 / period), 0.0 while unknown."""
        p = self.period_ns()
        return 1e9 / p if p else 0.0


def _refine(a: np.ndarray, guess: float) -> float:
    """The period from intervals ``a`` and a guess: the median of every interval divided by its multiple."""
    return float(np.median(a / np.maximum(1.0, np.floor(a / guess + 0.5))))


def _fit_share(a: np.ndarray, period: float) -> float:
    """The share of intervals ``a`` within :data:`FIT_TOLERANCE` of a whole number (>= 1) of ``period``."""
    k = np.maximum(1.0, np.floor(a / period + 0.5))
    return float(np.mean(np.abs(a / period - k) <= FIT_TOLERANCE))


def missing_in_gap(gap_ns: float, period_ns: float) -> int:
    """Frames missing in one gap: k - 1 for a gap of k periods (rounded; 0 for an ordinary interval)."""
    if period_ns <= 0:
        return 0
    return max(0, int(math.floor(gap_ns / period_ns + 0.5)) - 1)


class RateWindow:
    """Events per second over the last :data:`RATE_WINDOW_S` seconds (monotonic times), reported with its window.

    The rate is (events - 1) / (last - first) over the window's events, so a steady 2 Hz camera reads 2.00,
    not 1, 2 or 3 as a count per second would; when the newest event is older than twice the spacing it implies,
    the time since then counts too (a camera that stopped reads lower, not frozen at its old rate).
    """

    def __init__(self, window_s: float = RATE_WINDOW_S, max_events: int = 4096) -> None:
        self.window_s = float(window_s)
        self.times: deque[float] = deque(maxlen=max_events)

    def add(self, t: float) -> None:
        self.times.append(t)

    def rate(self, now: float) -> tuple[float, float]:
        """(rate in Hz, seconds the rate covers); (0.0, 0.0) before two events."""
        while self.times and self.times[0] < now - self.window_s:
            self.times.popleft()
        n = len(self.times)
        if n < 2:
            return 0.0, 0.0
        span = self.times[-1] - self.times[0]
        if span <= 0:
            return 0.0, 0.0
        gap = (n - 1) / span                       # events per second while they came
        idle = now - self.times[-1]
        covered = span + idle if idle > 2.0 / gap else span
        return (n - 1) / covered, covered


__all__ = ['HISTORY', 'MIN_INTERVALS', 'PAUSE_S', 'RATE_WINDOW_S', 'RateWindow', 'StampGaps', 'missing_in_gap']
