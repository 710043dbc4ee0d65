"""Engine cache: key invalidation per field, sidecar round trip, rebuild command, atomic locked writes."""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import pytest

from evit_ros.device.identity import GpuIdentity
from evit_ros.errors import EngineCacheMismatch
from evit_ros.export import engine_cache as ec

AGX = GpuIdentity('Orin', '8.7', 16, 62800, 'NVIDIA Jetson AGX Orin Developer Kit')
BASE: dict[str, Any] = dict(onnx_sha256='a' * 64, trt_version='10.3.0', gpu=AGX, precision='fp16',
                            shapes={'input': 'images', 'shape': [1, 512, 1024, 3]},
                            builder_flags=['FP16', 'OBEY_PRECISION_CONSTRAINTS'], pinned_layers=['/a/MatMul'])
CHANGES: dict[str, tuple[str, dict[str, Any]]] = {   # key field -> (what changed, cache_key arguments)
    'onnx_sha256': ('onnx', {'onnx_sha256': 'b' * 64}),
    'trt_version': ('trt', {'trt_version': '8.6.2'}),
    'gpu_name': ('gpu', {'gpu': GpuIdentity('Xavier', '8.7', 16, 62800, AGX.board)}),
    'compute_capability': ('cc', {'gpu': GpuIdentity('Orin', '7.2', 16, 62800, AGX.board)}),
    'gpu_sm_count': ('sms', {'gpu': GpuIdentity('Orin', '8.7', 8, 62800, AGX.board)}),
    'gpu_memory_mb': ('memory', {'gpu': GpuIdentity('Orin', '8.7', 16, 7620, AGX.board)}),
    'board': ('board', {'gpu': GpuIdentity('Orin', '8.7', 16, 62800, 'NVIDIA Jetson Orin NX')}),
    'precision': ('precision', {'precision': 'int8'}),
    'precision_policy': ('policy', {'precision_policy': ec.PRECISION_POLICY + 1}),
    'pinned_layers_sha256': ('pinned', {'pinned_layers': ['/a/MatMul', '/a/Slice']}),
    'shapes': ('shapes', {'shapes': {'input': 'images', 'shape': [2, 512, 1024, 3]}}),
    'builder_flags': ('flags', {'builder_flags': ['FP16']}),
}


def test_cache_key_changes_with_every_field() -> None:
    base = ec.cache_key(**BASE)
    assert len(base) == 64 and base == ec.cache_key(**BASE)
    assert set(CHANGES) == set(ec.KEY_FIELDS)
    keys = {base}
    for name, (_what, change) in CHANGES.items():
        k = ec.cache_key(**{**BASE, **change})
        assert k != base, name
        keys.add(k)
    assert len(keys) == len(CHANGES) + 1
    # the pinned set is a set: order and duplicates do not matter
    assert ec.cache_key(**{**BASE, 'pinned_layers': ['/a/MatMul', '/a/MatMul']}) == base
    # builder flag order does not matter; profiles do
    assert ec.cache_key(**{**BASE, 'builder_flags': ['OBEY_PRECISION_CONSTRAINTS', 'FP16']}) == base
    prof = {**BASE['shapes'], 'profile': {'min': [1], 'opt': [4], 'max': [4]}}
    assert ec.cache_key(**{**BASE, 'shapes': prof}) != base


def test_default_engine_path_naming() -> None:
    p = ec.default_engine_path('efficientvit-seg-b0-cityscapes', 512, 1024, 'labels+confidence', 1, 'fp16')
    assert p == Path('engines/efficientvit-seg-b0-cityscapes_512x1024_labels-confidence_b1_fp16.engine')
    assert ec.default_engine_path('m', 64, 128, 'logits', '1-4', 'int8', 'x').name == 'm_64x128_logits_b1-4_int8.engine'
    assert ec.sidecar_path(p).name == p.name + '.json'


def _write(tmp_path: Path, onnx_bytes: bytes = b'onnx-v1') -> tuple[Path, Path, dict]:
    onnx = tmp_path / 'm.onnx'
    onnx.write_bytes(onnx_bytes)
    fields = ec.key_fields(**{**BASE, 'onnx_sha256': hashlib.sha256(onnx_bytes).hexdigest()})
    engine = tmp_path / 'engines' / 'm.engine'
    cmd = ec.build_command(onnx, engine, 'fp16', workspace_mb=1024, dla_core=None)
    doc = ec.make_sidecar(fields, model_metadata={'evit.model': 'm'}, fp32_layers=['/a/MatMul', '/a/Div'],
                          rebuild_command=cmd)
    ec.write_engine(engine, b'ENGINE' * 100, doc)
    return onnx, engine, doc


def test_sidecar_round_trip_and_check(tmp_path: Path) -> None:
    onnx, engine, doc = _write(tmp_path)
    side = ec.read_sidecar(engine)
    assert side['key'] == doc['key'] == ec.key_from_fields(side['fields'])
    assert side['fp32_layers'] == ['/a/MatMul', '/a/Div'] and side['model_metadata'] == {'evit.model': 'm'}
    assert side['engine_bytes'] == 600
    ok = ec.check_engine(engine, onnx, trt_version='10.3.0', gpu=AGX, precision='fp16')
    assert ok['key'] == doc['key']
    assert not list(engine.parent.glob('*.tmp'))


@pytest.mark.parametrize('field,value,needle', [
    ('trt_version', '10.7.0', 'trt_version'),
    ('gpu', GpuIdentity('RTX 4090', '8.7', 16, 62800, AGX.board),
     "gpu_name: engine built for 'Orin', this machine has 'RTX 4090'"),
    ('gpu', GpuIdentity('Orin', '8.9', 16, 62800, AGX.board),
     "compute_capability: engine built for '8.7', this machine has '8.9'"),
    ('precision', 'fp32', 'precision'),
    ('gpu', GpuIdentity('Orin', '8.7', 8, 7620, 'NVIDIA Jetson Orin Nano Developer Kit'), 'gpu_sm_count: '
     "engine built for 16, this machine has 8; gpu_memory_mb: engine built for 62800, this machine has 7620; "
     "board: engine built for 'NVIDIA Jetson AGX Orin Developer Kit'"),
])
def test_mismatch_names_field_and_rebuild_command(tmp_path: Path, field: str, value: Any, needle: str) -> None:
    onnx, engine, doc = _write(tmp_path)
    with pytest.raises(EngineCacheMismatch) as ei:
        ec.check_engine(engine, onnx, **{field: value})
    msg = str(ei.value)
    assert needle in msg and (not isinstance(value, str) or value in msg)
    assert f'evit-ros build-engine --onnx {onnx} --precision fp16 --workspace-mb 1024 -o {engine}' in msg


def test_changed_onnx_and_tampered_files_are_mismatches(tmp_path: Path) -> None:
    onnx, engine, doc = _write(tmp_path)
    onnx.write_bytes(b'onnx-v2')
    with pytest.raises(EngineCacheMismatch, match='ONNX changed.*evit-ros build-engine'):
        ec.check_engine(engine, onnx)
    onnx.write_bytes(b'onnx-v1')
    ec.check_engine(engine, onnx)
    engine.write_bytes(b'ENGINE' * 50)
    with pytest.raises(EngineCacheMismatch, match='does not match the hash'):
        ec.check_engine(engine, onnx)
    _write(tmp_path)
    side = ec.sidecar_path(engine)
    d = json.loads(side.read_text())
    d['fields']['precision'] = 'fp32'
    side.write_text(json.dumps(d))
    with pytest.raises(EngineCacheMismatch, match='sidecar key does not match'):
        ec.check_engine(engine, onnx)
    side.write_text('{"key": "abc", "fields": {')   # truncated JSON
    with pytest.raises(EngineCacheMismatch, match='unreadable.*evit-ros build-engine'):
        ec.check_engine(engine, onnx)
    side.write_text('[1, 2]')
    with pytest.raises(EngineCacheMismatch, match='lacks key'):
        ec.check_engine(engine, onnx)
    side.unlink()
    with pytest.raises(EngineCacheMismatch, match='no sidecar'):
        ec.check_engine(engine, onnx)
    with pytest.raises(EngineCacheMismatch, match='does not exist'):
        ec.check_engine(tmp_path / 'missing.engine', onnx)


def _writer(path: str, tag: int, rounds: int) -> None:
    payload = bytes([tag]) * (1 << 20)
    fields = ec.key_fields(**{**BASE, 'onnx_sha256': str(tag) * 64})
    for i in range(rounds):
        doc = ec.make_sidecar(fields, model_metadata={}, fp32_layers=[], rebuild_command='x',
                              extra={'writer': tag, 'round': i})
        ec.write_engine(path, payload, doc)


def _checker(path: str, stop: Any, bad: Any, good: Any, ready: Any) -> None:
    """Loads the pair the way the backend does while the writers run; counts torn (mismatching) pairs."""
    ready.set()
    while not stop.is_set():
        try:
            doc = ec.check_engine(path)
        except EngineCacheMismatch as exc:
            if 'does not exist' not in str(exc) and 'no sidecar' not in str(exc):
                with bad.get_lock():
                    bad.value += 1
            continue
        with good.get_lock():
            good.value += 1
        if doc['fields']['onnx_sha256'][0] != str(doc['writer']):
            with bad.get_lock():
                bad.value += 1


def test_two_processes_writing_leave_a_valid_engine_and_sidecar(tmp_path: Path) -> None:
    engine = tmp_path / 'e.engine'
    ctx = mp.get_context('spawn')
    stop, ready, bad, good = ctx.Event(), ctx.Event(), ctx.Value('i', 0), ctx.Value('i', 0)
    checker = ctx.Process(target=_checker, args=(str(engine), stop, bad, good, ready))
    checker.start()
    assert ready.wait(60), 'the checker process did not start'   # spawn is slow on a loaded machine
    writers = [ctx.Process(target=_writer, args=(str(engine), tag, 15)) for tag in (1, 2)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    deadline = time.monotonic() + 30
    while good.value == 0 and time.monotonic() < deadline:   # the last pair is complete: it must be read once
        time.sleep(0.01)
    stop.set()
    checker.join(60)
    assert checker.exitcode == 0
    data = engine.read_bytes()
    side = json.loads(ec.sidecar_path(engine).read_text())
    assert len(data) == 1 << 20 and data == bytes([data[0]]) * len(data)
    # engine and sidecar are written under one lock, so they belong to the same writer
    assert side['writer'] == data[0] and side['round'] == 14
    assert side['engine_sha256'] == hashlib.sha256(data).hexdigest()
    assert not list(tmp_path.glob('.*.tmp'))
    # a concurrent reader (shared lock) never saw an engine with another writer's sidecar
    assert good.value > 0 and bad.value == 0


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    p = tmp_path / 'sub' / 'timing.cache'
    ec.atomic_write(p, b'x' * 10)
    ec.atomic_write(p, b'y' * 3)
    assert p.read_bytes() == b'yyy'
    assert sorted(x.name for x in p.parent.iterdir()) == ['timing.cache']   # no lock or temp file left


def test_engine_built_under_an_older_policy_is_rebuilt(tmp_path: Path) -> None:
    onnx, engine, doc = _write(tmp_path)
    side = ec.sidecar_path(engine)
    d = json.loads(side.read_text())
    d['fields']['precision_policy'] = ec.PRECISION_POLICY - 1
    d['key'] = ec.key_from_fields(d['fields'])
    side.write_text(json.dumps(d))
    with pytest.raises(EngineCacheMismatch, match=f'precision policy {ec.PRECISION_POLICY - 1}.*uses policy '
                                                  f'{ec.PRECISION_POLICY}.*evit-ros build-engine'):
        ec.check_engine(engine, onnx)
    d = json.loads(side.read_text())
    del d['fields']['board']    # a version-1 sidecar: no GPU identity beyond name + capability
    d['version'] = 1
    side.write_text(json.dumps(d))
    with pytest.raises(EngineCacheMismatch, match="cache key fields missing: \\['board'\\]"):
        ec.check_engine(engine, onnx)


def _hold_build_lock(path: str, entered: Any, release: Any) -> None:
    with ec.build_lock(path):
        entered.set()
        release.wait(30)


def test_build_lock_is_exclusive_across_processes_and_leaves_no_file(tmp_path: Path) -> None:
    engine = tmp_path / 'e.engine'
    ctx = mp.get_context('spawn')
    entered, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_build_lock, args=(str(engine), entered, release))
    holder.start()
    assert entered.wait(30)
    lock = ec.lock_path(engine.with_name(engine.name + '.build'))
    assert lock.exists()
    fd = ec._acquire(lock, shared=False, blocking=False)
    assert fd is None             # held by the other process
    release.set()
    holder.join(30)
    assert holder.exitcode == 0
    assert not lock.exists()      # removed by its last holder
    with ec.build_lock(engine):
        pass
    assert list(tmp_path.iterdir()) == []


def test_lock_waiter_retries_when_the_file_was_removed(tmp_path: Path) -> None:
    """A waiter that wakes up on an unlinked lock file must not think it holds the lock."""
    target = tmp_path / 'x.engine'
    lock = ec.lock_path(target)
    fd1 = ec._acquire(lock, shared=False)
    assert fd1 is not None
    stale = os.open(lock, os.O_RDWR)        # a waiter that opened the file before it was removed
    ec._release(lock, fd1)
    assert not lock.exists()
    fd2 = ec._acquire(lock, shared=False)   # a new holder makes a new file
    assert fd2 is not None and lock.exists()
    assert os.fstat(stale).st_ino != os.stat(lock).st_ino
    os.close(stale)
    ec._release(lock, fd2)
    assert not lock.exists()


def test_build_heartbeat_logs_until_stopped(caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import time

    from evit_ros.export.tensorrt_build import _Heartbeat
    with caplog.at_level(logging.INFO, logger='evit_ros.export.tensorrt_build'):
        with _Heartbeat('building x.engine', period=0.02) as hb:
            hb.phase = 'Tactic selection'
            time.sleep(0.15)
        n = len(caplog.records)
        time.sleep(0.06)
    assert n >= 2 and len(caplog.records) == n    # periodic while building, silent afterwards
    assert 'building x.engine: still building' in caplog.records[0].getMessage()
    assert 'phase: Tactic selection' in caplog.records[-1].getMessage()
