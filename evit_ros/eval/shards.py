"""Shards of a bag evaluation and the exact merge of their partial results.

A shard is one bag, or one time slice of a long bag (``--shard-seconds``). Both executors (local processes
and Ray actors) run :func:`run_shard` on every shard and :func:`merge_results` on what comes back, so a run
gives the same report whichever executor and however many workers evaluated it.

Slices are planned over the image topics' log times (empty slices skipped) and own the images whose *log time*
lies in ``[start, stop)`` (half-open, consecutive, the first and last open-ended): every image message belongs
to exactly one shard. A file-compressed bag is decompressed once per worker process (the slices and label
margins after the first reuse that copy, see :mod:`evit_ros.eval.bag_reader`). Labels are paired with images
by header stamp, so a pair may straddle a slice edge; each slice therefore also reads the label topics
``PAIR_MARGIN_S`` seconds beyond both of its edges (labels only, no image decoding) and pairs its own images
with them. Only the shard owning a label counts it as seen; ``labels_without_image`` is computed once, in the
merge, as labels seen minus labels paired. A label and its image more than ``PAIR_MARGIN_S`` apart in log time
across a slice edge are counted unmatched (in any real recording a label follows its image by milliseconds).

Everything a shard returns merges exactly: integer confusion matrices (overall and per camera, from which the
drivable groups are derived), integer latency histograms (``LatencyStats``), integer counters, and overlay
samples chosen by bottom-k of a hash of (bag, camera, stamp), a choice independent of how frames were split.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.errors import ConfigError, DataError
from evit_ros.eval.bag_reader import file_compressed_counts, image_log_times, release_temp
from evit_ros.eval.bags import BagEvent, iter_events, open_reader
from evit_ros.eval.scoring import EvalSpec, EvalState, Scorer, default_palette, feed_events

LOG = logging.getLogger('evit_ros.eval')
PAIR_MARGIN_S = 5.0
NS = 1_000_000_000


@dataclass(frozen=True)
class Shard:
    """One unit of work: a bag, or the slice ``[start_ns, stop_ns)`` of its log time (None: open end)."""

    index: int            # position in the plan: results merge in this order
    bag: str
    bag_index: int
    part: int = 0         # slice number within the bag
    parts: int = 1
    start_ns: int | None = None
    stop_ns: int | None = None
    frames: int = 0       # image messages expected (progress total)

    @property
    def name(self) -> str:
        if self.parts == 1:
            return self.bag
        return f'{self.bag} [slice {self.part + 1}/{self.parts}]'

    def owns(self, log_ns: int) -> bool:
        return (self.start_ns is None or log_ns >= self.start_ns) and (self.stop_ns is None or log_ns < self.stop_ns)


@dataclass
class ShardFailure:
    """A shard that failed after every attempt (or could not be planned): listed in the report, never merged."""

    shard: str
    bag: str
    error: str
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        return {'shard': self.shard, 'bag': self.bag, 'error': self.error, 'attempts': self.attempts}


@dataclass
class ShardPlan:
    shards: list[Shard]
    rejected: list[ShardFailure] = field(default_factory=list)   # bags unreadable on the driver

    @property
    def total_frames(self) -> int:
        return sum(s.frames for s in self.shards)


@dataclass
class ShardResult:
    """The mergeable partial result of one shard."""

    shard: Shard
    state: EvalState
    labels_seen: int = 0      # good label messages owned by this shard
    labels_paired: int = 0    # labels (owned or from a margin) paired with one of this shard's images
    seconds: float = 0.0      # wall time of the shard in its worker
    worker: str = ''
    out_part: str = ''
    started_at: float = 0.0   # time.time() when the worker began the shard (for overhead measurements)


def check_bags_reachable(bags: Sequence[str]) -> None:
    """Fail before anything is scheduled when a bag path does not exist here (the driver)."""
    if not bags:
        raise ConfigError('no --bag given; pass at least one ROS 2 bag')
    missing = [b for b in bags if not Path(b).exists()]
    if missing:
        raise DataError(f'{len(missing)} of {len(bags)} bags not found: {", ".join(missing[:5])}'
                        f'{" ..." if len(missing) > 5 else ""}; pass ROS 2 bag directories or .mcap/.db3 files on '
                        'storage every worker sees at the same path')


MAX_SHARDS = 100_000   # a plan larger than this is a mistake (a tiny --shard-seconds or a time outlier)


def plan_shards(bags: Sequence[str], spec: EvalSpec, shard_seconds: float = 0.0) -> ShardPlan:
    """One shard per bag, or with ``shard_seconds`` consecutive slices over where the bag's images are.

    Reads bag metadata and, when slicing, the log times of the image topics (from the MCAP message indexes or
    the sqlite3 index: no image is read). Slices are planned over the first to the last image (not the bag's
    whole log span, which a single stray message stamped 1 ns would stretch over decades); slices without
    images are not run: a shard owns the log times from its slice start to the next non-empty slice's start
    (the first and last open-ended), so every image still belongs to exactly one shard and ``frames`` is
    exact. A bag that cannot be opened or lacks an image topic is rejected here (listed in the report) and
    the others are planned; a plan of more than MAX_SHARDS shards is refused.
    """
    check_bags_reachable(bags)
    if shard_seconds < 0 or not math.isfinite(shard_seconds):
        raise ConfigError(f'--shard-seconds {shard_seconds} must be >= 0 (0: one shard per bag)')
    if 0 < shard_seconds < 2 * PAIR_MARGIN_S:
        raise ConfigError(f'--shard-seconds {shard_seconds} is shorter than {2 * PAIR_MARGIN_S:g} s, twice the label '
                          'pairing margin; use a longer slice (a few minutes keeps scheduling overhead small)')
    step = int(round(shard_seconds * NS))
    shards: list[Shard] = []
    rejected: list[ShardFailure] = []
    for bi, bag in enumerate(bags):
        times = None
        try:
            counts = file_compressed_counts(Path(bag)) if step == 0 else None
            if counts is None:
                with open_reader(bag, spec.read_limits) as reader:
                    counts = {}
                    for c in reader.connections:
                        counts[c.topic] = counts.get(c.topic, 0) + int(c.msgcount)
                    if step > 0 and all(t in counts for t in spec.image_topics):
                        times = image_log_times(reader, spec.image_topics)
        except DataError as exc:
            rejected.append(ShardFailure(bag, bag, one_line(str(exc)), 0))
            continue
        except Exception as exc:  # noqa: BLE001 - rosbags raises assorted types for unreadable bags
            rejected.append(ShardFailure(bag, bag, one_line(f'bag {bag} cannot be opened ({type(exc).__name__}: '
                                                            f'{exc}); it is empty, truncated or not a ROS 2 bag'), 0))
            continue
        finally:
            release_temp()   # the driver's copy of a file-compressed bag: workers decompress their own
        have = ', '.join(sorted(counts)) or 'none'
        missing = [t for t in spec.image_topics if t not in counts]
        if missing:
            rejected.append(ShardFailure(bag, bag, f'bag {bag} has no topic {missing[0]!r}; its topics are: {have}', 0))
            continue
        if spec.label_topics and not any(t in counts for t in spec.label_topics):   # nothing could be scored
            rejected.append(ShardFailure(bag, bag, f'bag {bag} has no label topic {", ".join(spec.label_topics)}; '
                                         f'its topics are: {have}', 0))
            continue
        images = sum(counts[t] for t in spec.image_topics)
        if times is None or times.size == 0:
            shards.append(Shard(len(shards), bag, bi, frames=images))
            continue
        starts, frames = slice_plan(times, step)
        if len(shards) + len(starts) > MAX_SHARDS:
            raise ConfigError(f'--shard-seconds {shard_seconds:g} plans more than {MAX_SHARDS} shards (bag {bag} '
                              f'alone: {len(starts)}); use a longer slice, e.g. --shard-seconds 600')
        parts = len(starts)
        for k in range(parts):
            lo = None if k == 0 else starts[k]
            hi = None if k == parts - 1 else starts[k + 1]
            shards.append(Shard(len(shards), bag, bi, k, parts, lo, hi, frames[k]))
    for f in rejected:
        LOG.error('skipped: %s', f.error)
    return ShardPlan(shards, rejected)


def slice_plan(times: np.ndarray, step: int) -> tuple[list[int], list[int]]:
    """Start times and image counts of the non-empty ``step``-long slices over sorted image log times."""
    first = int(times[0])
    index = (times.astype(np.int64) - first) // step
    slots, counts = np.unique(index, return_counts=True)
    return [first + int(k) * step for k in slots], [int(n) for n in counts]


def one_line(text: str, limit: int = 300) -> str:
    """An error as one short line (reports and logs list one line per failed bag)."""
    flat = ' '.join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + '...'


def sample_key(source: str, camera: str, stamp_ns: int) -> int:
    """A frame's overlay-sample priority: a hash of where it is, so the kept samples do not depend on sharding."""
    h = hashlib.blake2b(f'{source}|{camera}|{stamp_ns}'.encode(), digest_size=8).digest()
    return int.from_bytes(h, 'big')


class _ShardScorer(Scorer):
    """The evaluator's scorer with shard accounting: labels counted by their owner, samples by bottom-k."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.labels_paired = 0
        self._key = 0

    def on_label(self, cam: str, stamp: int, gt: np.ndarray) -> None:
        if self.duplicate_label(cam, stamp):   # counted (when owned) by the base scorer, never paired
            return
        preds = self.pending_pred.setdefault(cam, OrderedDict())
        if stamp in preds:
            self.labels_paired += 1
            self.score(cam, stamp, preds.pop(stamp), gt)
            return
        gts = self.pending_gt.setdefault(cam, OrderedDict())
        gts[stamp] = gt.copy()
        while len(gts) > self.spec.window:   # unpaired labels are counted by the merge: seen - paired
            gts.popitem(last=False)

    def on_prediction(self, cam: str, stamp: int, pred: np.ndarray) -> None:
        if stamp in self.pending_gt.get(cam, {}):
            self.labels_paired += 1
        super().on_prediction(cam, stamp, pred)

    def flush(self) -> None:
        for gts in self.pending_gt.values():
            gts.clear()
        super().flush()

    def on_image(self, ev: BagEvent, cam: str, rgb: np.ndarray, gt: np.ndarray | None = None) -> None:
        self._key = sample_key(self.source, cam, ev.stamp_ns)
        super().on_image(ev, cam, rgb, gt)

    def _take_sample(self) -> int:
        k, s = self.spec.samples, self.state.samples
        return 0 if k > 0 and (len(s) < k or self._key < s[-1]['key']) else -1

    def _sample(self, slot: int, cam: str, stamp: int, *args: Any, **kw: Any) -> None:
        samples = self.state.samples
        super()._sample(len(samples), cam, stamp, *args, **kw)   # appends the entry
        samples[-1].pop('frame', None)   # a per-shard count: not part of a shard-independent sample
        samples[-1]['key'] = self._key
        samples.sort(key=lambda e: e['key'])
        del samples[self.spec.samples:]
        waiting = getattr(self, 'sample_waiting', None)   # samples whose ground truth is still to come
        if waiting:
            where = {(e['camera'], e['stamp_ns']): i for i, e in enumerate(samples)}
            self.sample_waiting = {k: where[k] for k in waiting if k in where}


def _shard_events(shard: Shard, spec: EvalSpec, scorer: _ShardScorer) -> Iterator[tuple[BagEvent, bool]]:
    """(event, owned) of a shard in log order: front label margin, owned range, back label margin."""
    margin = int(PAIR_MARGIN_S * NS)
    if spec.label_topics and shard.start_ns is not None:
        for ev in iter_events(shard.bag, spec.image_topics, spec.label_topics, start_ns=shard.start_ns - margin,
                              stop_ns=shard.start_ns, labels_only=True, limits=spec.read_limits):
            yield ev, False
    for ev in iter_events(shard.bag, spec.image_topics, spec.label_topics, start_ns=shard.start_ns,
                          stop_ns=shard.stop_ns, limits=spec.read_limits):
        yield ev, True
    if spec.label_topics and shard.stop_ns is not None and scorer.waiting_for_labels():
        for ev in iter_events(shard.bag, spec.image_topics, spec.label_topics, start_ns=shard.stop_ns,
                              stop_ns=shard.stop_ns + margin, labels_only=True, limits=spec.read_limits):
            yield ev, False
            if not scorer.waiting_for_labels():
                return


def run_shard(shard: Shard, spec: EvalSpec, segmenter: Any, num_classes: int, *, out_part: str = '',
              progress: Callable[[int], None] | None = None) -> ShardResult:
    """Evaluate one shard with an already-built segmenter: THE shard function of both executors.

    Ctrl-C (in the driver's own process) stops early and returns the partial result marked interrupted.
    ``progress(frames)`` is called now and then with the number of images processed so far.
    """
    t0, started_at = time.monotonic(), time.time()
    state = EvalState(num_classes)
    scorer = _ShardScorer(state, spec, segmenter, out_part, shard.bag, default_palette(num_classes))
    last = [time.monotonic()]

    def on_frame(frames: int) -> None:   # progress now and then, not per frame
        if progress is not None and time.monotonic() - last[0] > 1.0:
            last[0] = time.monotonic()
            progress(frames)

    try:
        feed_events(_shard_events(shard, spec, scorer), state, spec, scorer, spec.label_format, on_frame)
    except KeyboardInterrupt:
        state.interrupted = True
        LOG.warning('interrupted after %d frames of %s', scorer.frames, shard.name)
    except BaseException:
        scorer.abort()   # a failed shard's output is discarded (its result never merged)
        raise
    scorer.flush()
    if progress is not None:
        progress(scorer.frames)
    state.sources.append(shard.bag)
    return ShardResult(shard, state, scorer.labels_owned, scorer.labels_paired, time.monotonic() - t0,
                       f'{socket.gethostname()}:{os.getpid()}', out_part, started_at)


class ResultMerger:
    """THE merge, incremental: each shard's partial is added as it arrives and then dropped, so the driver holds
    one running total (not thousands of partials). Every part is an integer sum or a bottom-k selection, so
    the order results arrive in cannot change the total."""

    def __init__(self, num_classes: int, samples: int) -> None:
        self.state = EvalState(num_classes)
        self.samples = max(0, samples)
        self.seen = self.paired = 0
        self.sources: dict[int, str] = {}

    def add(self, r: ShardResult) -> None:
        self.state.merge(r.state)
        self.state.samples = sorted(self.state.samples, key=lambda e: e['key'])[:self.samples]
        self.seen += r.labels_seen
        self.paired += r.labels_paired
        self.sources[r.shard.index] = r.shard.bag

    def finish(self) -> EvalState:
        state = self.state
        unpaired = self.seen - self.paired - state.counters.get('duplicate_label_stamps', 0)
        if unpaired > 0:
            state.counters['labels_without_image'] += unpaired
        elif unpaired < 0:   # a label paired in two slices (one stamp on images on both sides of an edge)
            state.counters['labels_paired_twice'] += -unpaired
        if self.seen:
            state.counters['labels'] += self.seen
        state.sources = list(dict.fromkeys(self.sources[i] for i in sorted(self.sources)))
        return state


def merge_results(results: Sequence[ShardResult], num_classes: int, samples: int) -> EvalState:
    """The merged state of several shard results (see ResultMerger)."""
    merger = ResultMerger(num_classes, samples)
    for r in results:
        merger.add(r)
    return merger.finish()


def shard_spec(spec: EvalSpec) -> EvalSpec:
    """The spec a worker runs a shard with (progress is reported to the driver, not printed by workers)."""
    return replace(spec, progress=False, out_bag='')
