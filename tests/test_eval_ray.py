"""``--executor ray`` on a real local Ray cluster (one small cluster for the whole module): the Ray report equals
the local report exactly, faults are retried or reported, a lost actor is survived, Ray missing gives the
install line, and the CLI runs the real ONNX Runtime pipeline on Ray actors."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from eval_support import HANG_GREEN, POISON_GREEN, FaultyFactory, export_tiny_onnx, red_factory, write_bag, write_drive
from test_eval_shards import assert_same_report, interrupt_when, run, spec

from evit_ros.cli.main import main
from evit_ros.errors import ConfigError
from evit_ros.eval.executors import ExecutionOptions, make_executor

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope='module', autouse=True)
def cluster():
    pp = os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get('PYTHONPATH', '')])
    ray.init(address='local', num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024,
             log_to_driver=False, logging_level=logging.WARNING,
             runtime_env={'env_vars': {'PYTHONPATH': pp, 'OMP_NUM_THREADS': '1'}})
    yield
    ray.shutdown()


@pytest.fixture(scope='module')
def drives(tmp_path_factory) -> list:
    d = tmp_path_factory.mktemp('drives')
    return [write_drive(d / 'long', 60.0, seed=1), write_drive(d / 'short_a', 8.0, seed=2),
            write_drive(d / 'short_b', 12.0, seed=3)]


def test_ray_report_equals_local_report_and_lists_a_permanently_failing_shard(drives, tmp_path) -> None:
    poison = write_drive(tmp_path / 'poison', 6.0, seed=9, green=POISON_GREEN)
    local = run(drives)                                              # one process, whole bags
    on_ray = run([drives[0], poison, *drives[1:]], factory=FaultyFactory(), executor='ray', shard_seconds=10.0)
    assert_same_report(local, on_ray)                                # 2 actors, 9 shards + the poisoned bag
    assert on_ray.shards['executor'] == 'ray' and on_ray.shards['done'] == 9
    (f,) = on_ray.shards['failed']
    assert f['bag'] == str(poison) and f['attempts'] == 3 and 'poisoned frame' in f['error']
    assert local.counters['frames_scored'] > 200


def test_ray_retries_a_failed_shard_and_survives_a_lost_actor(drives, tmp_path) -> None:
    ref = run(drives[:1], shard_seconds=10.0)
    flaky = run(drives[:1], factory=FaultyFactory(str(tmp_path / 'raised')), executor='ray', shard_seconds=10.0)
    assert (tmp_path / 'raised').exists() and flaky.shards['retried'] == 1 and not flaky.shards['failed']
    assert_same_report(ref, flaky)
    lost = run(drives[:1], factory=FaultyFactory(str(tmp_path / 'exited'), 'exit'), executor='ray', jobs=1,
               shard_seconds=10.0)                      # the only actor dies; Ray restarts it and the run goes on
    assert (tmp_path / 'exited').exists() and lost.shards['retried'] == 1 and not lost.shards['failed']
    assert_same_report(ref, lost)


def test_ray_ctrl_c_cancels_the_rest_and_keeps_finished_shards(drives, tmp_path) -> None:
    import time
    hang = write_drive(tmp_path / 'hang', 6.0, seed=7, green=HANG_GREEN)
    watcher = interrupt_when(tmp_path / 'm.hang')
    st = run([drives[1], hang, drives[2]], factory=FaultyFactory(str(tmp_path / 'm'), 'hang'), executor='ray')
    watcher.stop()
    watcher.join()
    assert hasattr(watcher, 'sent'), 'the run ended without ever starting the hanging shard'
    assert time.monotonic() - watcher.sent < 20   # the hanging actor was not waited for (it sleeps 60 s)
    assert st.interrupted and str(hang) in st.shards['not_run']
    assert st.counters['frames'] == sum(32 if s == str(drives[1]) else 48 for s in st.sources)


def test_ray_missing_gives_the_install_line(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, 'ray', None)      # `import ray` raises ImportError, as when not installed
    with pytest.raises(ConfigError, match=r"pip install 'ray"):
        make_executor(spec(), red_factory, 19, ExecutionOptions(executor='ray'), 3)


def test_cli_executor_ray_real_onnxruntime_equals_local(tmp_path) -> None:
    h, w = 64, 128
    onnx = export_tiny_onnx(tmp_path / 'b0.onnx', h, w)
    rng = np.random.default_rng(5)
    bags = []
    for b in range(2):
        frames = []
        for i in range(3):
            rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            st = 1_700_000_000_000_000_000 + i * 10**8
            frames += [{'topic': '/front/image_raw', 'stamp': st, 'rgb': rgb},
                       {'topic': '/front/labels', 'stamp': st, 'label': rng.integers(0, 19, (h, w), dtype=np.uint8)}]
        bags.append(write_bag(tmp_path / f'drive{b}', frames))
    common = ['eval', '--backend', 'onnxruntime', '--onnx', str(onnx), '--height', str(h), '--width', str(w),
              '--image-topic', '/front/image_raw', '--label-topic', '/front/labels', '--no-progress']
    for b in bags:
        common += ['--bag', str(b)]
    assert main(common + ['--report', str(tmp_path / 'local')]) == 0
    assert main(common + ['--report', str(tmp_path / 'ray'), '--executor', 'ray', '--jobs', '2',
                          '--out-bag', str(tmp_path / 'masks')]) == 0
    a, b = (json.loads((tmp_path / d / 'report.json').read_text()) for d in ('local', 'ray'))
    for key in ('metrics', 'per_camera', 'frames', 'frames_scored', 'counters', 'sources', 'confusion_matrix'):
        assert a[key] == b[key], key
    assert a['metrics']['valid_pixels'] == 6 * h * w and b['shards']['done'] == 2
    assert sorted(p.name for p in (tmp_path / 'masks').iterdir()) == ['drive0', 'drive1']
