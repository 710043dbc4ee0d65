"""Shards and the local executor: slicing a bag by log time loses and doubles nothing, the merge is exact, and
faults (a shard raising, a worker process dying, a bag that always fails) are retried or reported.

Bags are written here; the segmenter is the counted stand-in from eval_support so every number is exact."""
from __future__ import annotations

import numpy as np
import pytest
from eval_support import HANG_GREEN, POISON_GREEN, FaultyFactory, red_factory, write_bag, write_drive

from evit_ros.errors import ConfigError, DataError
from evit_ros.eval.bags import iter_events
from evit_ros.eval.executors import ExecutionOptions
from evit_ros.eval.report import build_report
from evit_ros.eval.runner import evaluate_bags
from evit_ros.eval.scoring import EvalSpec, EvalState
from evit_ros.eval.shards import PAIR_MARGIN_S, plan_shards

CLASSES = tuple(f'c{i}' for i in range(19))
IMG, LAB = '/front/image_raw', '/front/labels'
FIXED_STAGES = ('preprocess', 'infer', 'postprocess')   # the stand-in reports fixed times: exact to compare


def spec(**kw: object) -> EvalSpec:
    base = dict(image_topics=(IMG,), label_topics=(LAB,), progress=False, samples=5)
    base.update(kw)
    return EvalSpec(**base)  # type: ignore[arg-type]


def run(bags: list, sp: EvalSpec | None = None, factory=red_factory, **opts: object) -> EvalState:
    o = dict(progress=False)
    o.update(opts)
    return evaluate_bags([str(b) for b in bags], sp or spec(), factory, 19,
                         execution=ExecutionOptions(**o))  # type: ignore[arg-type]


def assert_same_report(a: EvalState, b: EvalState) -> None:
    """Identical intersections, unions, mIoU, frame counts, counters, samples; fixed-time latency bins equal."""
    ra, rb = build_report(a, CLASSES, [('drivable', [0, 1])]), build_report(b, CLASSES, [('drivable', [0, 1])])
    assert ra['metrics'] == rb['metrics'] and ra['per_camera'] == rb['per_camera']
    assert np.array_equal(a.cm.matrix, b.cm.matrix)
    assert dict(a.counters) == dict(b.counters)
    assert ra['sources'] == rb['sources']
    assert len(a.samples) == len(b.samples) and a.samples == b.samples    # same frames, same overlay bytes
    for stage in a.latency.stages:
        assert a.latency.count(stage) == b.latency.count(stage)
    for stage in FIXED_STAGES:
        assert a.latency.histogram(stage)[1].tolist() == b.latency.histogram(stage)[1].tolist()
        assert ra['latency_ms'][stage] == rb['latency_ms'][stage]


@pytest.fixture(scope='module')
def drives(tmp_path_factory) -> list:
    d = tmp_path_factory.mktemp('drives')
    return [write_drive(d / 'long', 60.0, seed=1), write_drive(d / 'short_a', 8.0, seed=2),
            write_drive(d / 'short_b', 12.0, seed=3)]


def test_slices_cover_every_message_once(drives) -> None:
    plan = plan_shards([str(drives[0])], spec(), shard_seconds=10.0)
    shards = plan.shards
    assert len(shards) == 6 and shards[0].start_ns is None and shards[-1].stop_ns is None
    assert all(a.stop_ns == b.start_ns for a, b in zip(shards, shards[1:], strict=False))
    logs = [ev.log_ns for ev in iter_events(drives[0], [IMG])]
    owners = [[s.index for s in shards if s.owns(t)] for t in logs]
    assert all(len(o) == 1 for o in owners) and len(logs) == 240
    assert sum(s.frames for s in shards) == pytest.approx(240, abs=len(shards))


def test_sliced_run_equals_whole_bag_run_exactly(drives) -> None:
    whole = run(drives)
    sliced = run(drives, shard_seconds=10.0)
    c = whole.counters
    assert c['frames'] == 240 + 32 + 48 and c['frames_scored'] > 200 and c['labels_without_image'] > 0
    assert c['frames_scored'] + c['frames_without_gt'] == c['frames']
    assert_same_report(whole, sliced)
    assert sliced.shards['total'] == 6 + 1 + 2 and sliced.shards['done'] == 9 and not sliced.shards['failed']
    assert len(sliced.samples) == 5 and whole.sources == [str(b) for b in drives]


def test_a_pair_farther_apart_than_the_margin_is_counted_once_unmatched(tmp_path) -> None:
    from eval_support import scene
    t0, st = 1_000_000_000_000, 1_700_000_000_000_000_000
    rgb = scene(0)
    gt = np.minimum(rgb[..., 0] // 10, 18).astype(np.uint8)
    far = int((PAIR_MARGIN_S + 2) * 1e9)
    frames = [{'topic': IMG, 'stamp': st, 'rgb': rgb, 'log': t0 + 29 * 10**9},        # slice 3 of 10 s
              {'topic': LAB, 'stamp': st, 'label': gt, 'log': t0 + 29 * 10**9 + far},  # slice 4
              {'topic': IMG, 'stamp': st + 1, 'rgb': rgb, 'log': t0},
              {'topic': IMG, 'stamp': st + 2, 'rgb': rgb, 'log': t0 + 60 * 10**9},
              {'topic': IMG, 'stamp': st + 3, 'rgb': rgb, 'log': t0 + 31 * 10**9}]   # slice 4 has an image
    bag = write_bag(tmp_path / 'far', sorted(frames, key=lambda f: f['log']))
    whole, sliced = run([bag]), run([bag], shard_seconds=10.0)
    assert whole.counters['frames_scored'] == 1 and whole.counters['labels_without_image'] == 0
    c = sliced.counters
    assert sliced.shards['total'] == 4   # slices 1, 3, 4 and 7 of 10 s hold images; the empty ones are not run
    assert c['frames'] == 4 and c['frames_scored'] == 0 and c['frames_without_gt'] == 4
    assert c['labels_without_image'] == 1


def test_jobs_2_with_a_transient_fault_and_a_lost_worker_equals_jobs_1(drives, tmp_path) -> None:
    ref = run(drives, shard_seconds=10.0)
    flaky = run(drives, factory=FaultyFactory(str(tmp_path / 'raised')), jobs=2, shard_seconds=10.0)
    assert (tmp_path / 'raised').exists() and flaky.shards['retried'] == 1 and not flaky.shards['failed']
    assert_same_report(ref, flaky)
    lost = run(drives, factory=FaultyFactory(str(tmp_path / 'exited'), 'exit'), jobs=2, shard_seconds=10.0)
    assert (tmp_path / 'exited').exists() and lost.shards['retried'] >= 1 and not lost.shards['failed']
    assert_same_report(ref, lost)


def test_a_permanently_failing_bag_is_listed_and_never_counted(drives, tmp_path) -> None:
    poison = write_drive(tmp_path / 'poison', 6.0, seed=9, green=POISON_GREEN)
    ref = run(drives)
    st = run([drives[0], poison, drives[1], drives[2]], factory=FaultyFactory(), max_retries=1)
    assert_same_report(ref, st)
    (f,) = st.shards['failed']
    assert f['bag'] == str(poison) and f['attempts'] == 2 and 'injected fault: poisoned frame' in f['error']
    assert st.shards['done'] == 3 and st.shards['retried'] == 1


def test_unreachable_bags_fail_before_any_worker_starts(tmp_path, drives) -> None:
    def never() -> None:
        raise AssertionError('the model must not load when a bag path is wrong')
    with pytest.raises(DataError, match='2 of 3 bags not found.*every worker sees'):
        evaluate_bags([str(drives[0]), str(tmp_path / 'nope1'), str(tmp_path / 'nope2')], spec(), never, 19)
    (tmp_path / 'junk.mcap').write_bytes(b'not a bag')
    st = run([drives[1], tmp_path / 'junk.mcap'])
    assert st.shards['failed'][0]['bag'] == str(tmp_path / 'junk.mcap') and st.shards['failed'][0]['attempts'] == 0
    assert st.counters['frames'] == 32
    with pytest.raises(ConfigError, match='shard-seconds'):
        run(drives, shard_seconds=3.0)
    with pytest.raises(ConfigError, match='executor'):
        ExecutionOptions(executor='spark')


def test_out_bag_folder_one_bag_per_input_published_atomically(drives, tmp_path) -> None:
    from rosbags.rosbag2 import Reader
    out = tmp_path / 'masks'
    st = run(drives, spec(out_bag=str(out)), jobs=2, shard_seconds=10.0)
    assert sorted(p.name for p in out.iterdir()) == ['long', 'short_a', 'short_b']
    assert not list(tmp_path.glob('.masks.partial-*'))
    assert len(list((out / 'long').glob('*.mcap'))) == 6
    for bag in drives:
        name = bag.name
        stamps_in = [ev.stamp_ns for ev in iter_events(bag, [IMG])]
        masks = list(iter_events(out / name, [], ['/segmentation/front/mask']))
        assert [m.stamp_ns for m in masks] == stamps_in                 # every frame once, in order
        with Reader(out / name) as r:
            assert r.message_count == 3 * len(stamps_in)
    assert st.shards['out_bags'] == [str(out / n) for n in ('long', 'short_a', 'short_b')]
    with pytest.raises(ConfigError, match='already exists'):
        run(drives, spec(out_bag=str(out)))
    with pytest.raises(ConfigError, match='names one MCAP file'):
        run(drives, spec(out_bag=str(tmp_path / 'all.mcap')))
    assert not (tmp_path / 'all.mcap').exists()


def interrupt_when(path):
    """Ctrl-C this process (SIGINT to the main thread) as soon as ``path`` exists; ``.sent`` is when.

    It waits for the state the test needs, not for a fixed time: on a loaded machine the hanging shard may start
    minutes in. The suite's per-test timeout bounds the wait; ``.stop()`` ends a watcher whose file never came.
    """
    import signal
    import threading
    import time

    stop = threading.Event()

    def watch() -> None:
        while not path.exists():
            if stop.wait(0.05):
                return
        t.sent = time.monotonic()  # type: ignore[attr-defined]
        signal.raise_signal(signal.SIGINT)
    t = threading.Thread(target=watch, daemon=True)
    t.stop = stop.set  # type: ignore[attr-defined]
    t.start()
    return t


def test_ctrl_c_cancels_the_rest_and_keeps_finished_shards(drives, tmp_path) -> None:
    import time
    hang = write_drive(tmp_path / 'hang', 6.0, seed=7, green=HANG_GREEN)
    marker = tmp_path / 'm'
    watcher = interrupt_when(tmp_path / 'm.hang')
    st = run([drives[1], hang, drives[2]], factory=FaultyFactory(str(marker), 'hang'), jobs=2)
    watcher.stop()
    watcher.join()
    assert hasattr(watcher, 'sent'), 'the run ended without ever starting the hanging shard'
    assert time.monotonic() - watcher.sent < 20   # the hanging worker was not waited for (it sleeps 60 s)
    assert st.interrupted and st.shards['done'] <= 2 and str(hang) in st.shards['not_run']
    assert st.counters['frames'] == sum(32 if s == str(drives[1]) else 48 for s in st.sources)


def _broken_factory() -> None:
    from evit_ros.errors import BackendError
    raise BackendError('engine x.engine was built for another GPU; rebuild it')


def test_a_pipeline_that_cannot_load_stops_the_run_with_its_error(drives, tmp_path) -> None:
    from evit_ros.eval.executors import WorkerSetupError
    for jobs in (1, 2):
        with pytest.raises(WorkerSetupError, match='another GPU'):
            run(drives, spec(out_bag=str(tmp_path / f'out{jobs}')), factory=_broken_factory, jobs=jobs)
    assert list(tmp_path.iterdir()) == []          # no output, no staging folder left behind
    with pytest.raises(ConfigError, match='need --executor ray'):
        ExecutionOptions(ray_address='head:6379')


def test_a_bad_bag_fails_once_without_retries(drives, tmp_path) -> None:
    wrong = write_bag(tmp_path / 'wrong_type', [
        {'topic': IMG, 'type': 'std_msgs/msg/String', 'raw': b'\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00'},
        {'topic': LAB, 'stamp': 0, 'label': np.zeros((4, 4), np.uint8)}])
    st = run([drives[1], wrong], max_retries=3)
    (f,) = st.shards['failed']
    assert f['bag'] == str(wrong) and f['attempts'] == 1 and 'std_msgs/msg/String' in f['error']
    assert st.shards['retried'] == 0 and st.counters['frames'] == 32


def test_progress_on_the_driver_counts_frames_and_shards(drives, capsys) -> None:
    run(drives, shard_seconds=10.0, progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith('eval: ')]
    assert lines and lines[-1].startswith('eval: 320/')
    assert 'shards 9/9 done, 0 failed, 0 retried' in lines[-1] and len(lines) <= 3   # not one line per frame


def test_a_worker_lost_before_the_next_submit_is_replaced_not_raised(drives, tmp_path) -> None:
    """The driver reads results one at a time: a worker that died after the last one read breaks the pool before
    the next submit. That submit gets fresh processes (it raised BrokenProcessPool out of the whole evaluation),
    and the lost shard still fails in result(), so it is retried."""
    from concurrent.futures import wait

    from evit_ros.eval.executors import _ProcessExecutor, _ShardError
    sp = spec()
    shards = plan_shards([str(drives[1])], sp).shards
    ex = _ProcessExecutor(sp, FaultyFactory(str(tmp_path / 'exited'), 'exit'), 19, jobs=2)
    try:
        lost = ex.submit(shards[0], '')
        wait([lost], timeout=120)          # the worker exited: the pool is broken, nothing read yet
        assert lost.done()
        again = ex.submit(shards[0], '')   # before the fix: BrokenProcessPool here
        with pytest.raises(_ShardError, match='worker process died'):
            ex.result(lost)
        wait([again], timeout=120)
        status, _ = ex.result(again)
        assert status == 'ok', status
    finally:
        ex.cancel()
        ex.close()
