"""Bag reading a hostile or odd bag cannot exhaust or hang (issue 24, items 1-5 and 13's reading part).

Every input is generated here: MCAP files are written byte by byte (so a chunk can lie about its size, or
every chunk can span the whole drive), decompression bombs are streamed through a compressor in 1 MiB
pieces (1 GiB of zeros is a few hundred KB of zstd), and peak memory is the child's own VmHWM at its exit
(not ``ru_maxrss``, which Linux inherits from the forking pytest process).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from eval_support import write_bag

from evit_ros.errors import ConfigError, DataError
from evit_ros.eval import bag_reader
from evit_ros.eval.bag_reader import BagLimitError, ReadLimits, image_log_times
from evit_ros.eval.bags import IMAGE, MessageFactory, iter_events, open_reader
from evit_ros.eval.scoring import EvalSpec
from evit_ros.eval.shards import plan_shards

IMG, LAB = '/front/image_raw', '/front/labels'
ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
T0 = 1_700_000_000_000_000_000


# -- a byte-level MCAP writer (what a real recorder or an attacker can produce) --------------------------

def _u16(v: int) -> bytes:
    return v.to_bytes(2, 'little')


def _u32(v: int) -> bytes:
    return v.to_bytes(4, 'little')


def _u64(v: int) -> bytes:
    return v.to_bytes(8, 'little')


def _s(b: bytes) -> bytes:
    return _u32(len(b)) + b


def _rec(op: int, body: bytes) -> bytes:
    return bytes([op]) + _u64(len(body)) + body


def zstd_stream(payload: bytes, zeros: int = 0) -> bytes:
    """``payload`` then ``zeros`` zero bytes as one zstd frame, compressed in 1 MiB steps (no content size)."""
    c = bag_reader.zstd.ZstdCompressor(level=1)
    out = [c.compress(payload)]
    block = bytes(MB)
    for _ in range(zeros // MB):
        out.append(c.compress(block))
    out.append(c.flush())
    return b''.join(out)


def lz4_stream(payload: bytes, zeros: int = 0) -> bytes:
    import lz4.frame
    c = lz4.frame.LZ4FrameCompressor()
    out = [c.begin(), c.compress(payload)]
    block = bytes(MB)
    for _ in range(zeros // MB):
        out.append(c.compress(block))
    out.append(c.flush())
    return b''.join(out)


def write_mcap(path: Path, chunks: list[list[tuple[str, int, bytes]]], compression: str = 'zstd',
               bomb_zeros: int = 0, crc: bool = False, summary: bool = True) -> Path:
    """An indexed ros2 MCAP: each chunk a list of (topic, log_ns, cdr); ``bomb_zeros`` zero bytes appended to
    the first chunk's compressed stream while it keeps declaring its true uncompressed size."""
    topics = sorted({t for ch in chunks for t, _, _ in ch})
    cid = {t: i + 1 for i, t in enumerate(topics)}
    schema = _rec(0x03, _u16(1) + _s(IMAGE.encode()) + _s(b'ros2msg') + _s(b''))
    channels = [_rec(0x04, _u16(cid[t]) + _u16(1) + _s(t.encode()) + _s(b'cdr') + _u32(0)) for t in topics]
    out = bytearray(b'\x89MCAP0\r\n') + _rec(0x01, _s(b'ros2') + _s(b'evit-test'))
    out += schema + b''.join(channels)
    index, counts, times = [], {t: 0 for t in topics}, []
    for k, msgs in enumerate(chunks):
        body, offsets = bytearray(), {}
        for seq, (t, log, data) in enumerate(msgs):
            offsets.setdefault(cid[t], []).append((log, len(body)))
            body += _rec(0x05, _u16(cid[t]) + _u32(seq) + _u64(log) + _u64(log) + data)
            counts[t] += 1
            times.append(log)
        raw = bytes(body)
        zeros = bomb_zeros if k == 0 else 0
        data = {'zstd': lambda r, z=zeros: zstd_stream(r, z), 'lz4': lambda r, z=zeros: lz4_stream(r, z),
                '': lambda r: r}[compression](raw)
        lo, hi = min(m[1] for m in msgs), max(m[1] for m in msgs)
        start = len(out)
        out += _rec(0x06, _u64(lo) + _u64(hi) + _u64(len(raw)) + _u32(zlib.crc32(raw) if crc else 0)
                    + _s(compression.encode()) + _u64(len(data)) + data)
        length = len(out) - start
        idx_at = {}
        for ch, pairs in sorted(offsets.items()):
            idx_at[ch] = len(out)
            out += _rec(0x07, _u16(ch) + _u32(16 * len(pairs)) + b''.join(_u64(a) + _u64(b) for a, b in pairs))
        idx_len = len(out) - start - length
        index.append(_rec(0x08, _u64(lo) + _u64(hi) + _u64(start) + _u64(length)
                          + _s(b''.join(_u16(c) + _u64(o) for c, o in idx_at.items())) + _u64(idx_len)
                          + _s(compression.encode()) + _u64(len(data)) + _u64(len(raw))))
    out += _rec(0x0F, _u32(0))
    if not summary:   # no summary: readers must scan the data section (rosbags' meta_scan)
        out += _rec(0x02, _u64(0) + _u64(0) + _u32(0)) + b'\x89MCAP0\r\n'
        path.write_bytes(bytes(out))
        return path
    start_summary = len(out)
    out += schema + b''.join(channels) + b''.join(index)
    out += _rec(0x0B, _u64(len(times)) + _u16(1) + _u32(len(topics)) + _u32(0) + _u32(0) + _u32(len(chunks))
                + _u64(min(times)) + _u64(max(times))
                + _s(b''.join(_u16(cid[t]) + _u64(counts[t]) for t in topics)))
    out += _rec(0x02, _u64(start_summary) + _u64(0) + _u32(0)) + b'\x89MCAP0\r\n'
    path.write_bytes(bytes(out))
    return path


def cdr_image(stamp: int, h: int = 8, w: int = 16, value: int = 40) -> bytes:
    f = MessageFactory()
    return f.serialize(f.image(np.full((h, w, 3), value, np.uint8), stamp, 'rgb8', 'cam'), IMAGE)


def frames(n: int, start_log: int = 1_000_000_000, period: int = 50_000_000) -> list[tuple[str, int, bytes]]:
    return [(IMG, start_log + i * period, cdr_image(T0 + i)) for i in range(n)]


HWM_PROBE = """
import atexit as _atexit, os as _os
def _write_hwm():
    with open('/proc/self/status') as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith('VmHWM:'))
    with open(_os.environ['EVIT_TEST_HWM_FILE'], 'w') as out:
        out.write(str(kb))
_atexit.register(_write_hwm)
"""


def child(code: str, tmp: Path, timeout: float = 60) -> tuple[int, str, float]:
    """Run ``code`` in a fresh interpreter: (exit status, stdout+stderr, its own peak RSS in MiB).

    The peak is the interpreter's own VmHWM, read at its exit: the high-water mark of its address space alone.
    (``ru_maxrss`` from wait4 is not: Linux carries the forking pytest process's RSS into the child's maxrss,
    so it grew with whatever tests ran before.)
    """
    hwm = tmp / 'child.hwm'
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp), EVIT_TEST_HWM_FILE=str(hwm))
    logf = tmp / 'child.log'
    with open(logf, 'wb') as log:
        p = subprocess.Popen([sys.executable, '-c', HWM_PROBE + textwrap.dedent(code)], env=env, stdout=log,
                             stderr=subprocess.STDOUT)
        try:
            p.wait(timeout)
        except BaseException:
            p.kill()
            raise
    peak = int(hwm.read_text()) / 1024.0 if hwm.is_file() else float('inf')
    return p.returncode, logf.read_text(), peak


READ_ALL = '''
import sys, json
from evit_ros.eval.bags import iter_events
from evit_ros.eval.bag_reader import ReadLimits
from evit_ros.errors import DataError
try:
    n = sum(1 for _ in iter_events({bag!r}, ['{img}'], limits=ReadLimits({cap}, {tmp_cap})))
    print('READ', n)
except DataError as exc:
    print('REFUSED', exc)
'''


def read_in_child(bag: Path, tmp: Path, cap: float = 256, tmp_cap: float = 8192) -> tuple[str, float]:
    rc, out, rss = child(READ_ALL.format(bag=str(bag), img=IMG, cap=cap, tmp_cap=tmp_cap), tmp)
    assert rc == 0, out
    return out.strip().splitlines()[-1], rss


# -- 1: MCAP chunk bombs -------------------------------------------------------------------------------

@pytest.mark.parametrize('compression', ['zstd', 'lz4'])
def test_a_chunk_bomb_declaring_its_true_size_is_refused_within_the_declared_size(tmp_path, compression) -> None:
    bag = write_mcap(tmp_path / 'bomb.mcap', [frames(3)], compression, bomb_zeros=1 << 30)
    assert bag.stat().st_size < 6 * MB            # 1 GiB of zeros behind 3 tiny images
    line, rss = read_in_child(bag, tmp_path)
    assert line.startswith('REFUSED') and 'more than its declared size of' in line and 'chunk at byte' in line, line
    assert rss < 300, f'peak RSS {rss:.0f} MiB reading a 1 GiB bomb'   # unbounded: > 1,000 MiB


def test_an_mcap_without_summary_reads_in_order_and_its_bomb_is_refused(tmp_path) -> None:
    msgs = frames(6)
    plain = write_mcap(tmp_path / 'nosummary.mcap', [msgs[:3], msgs[3:]], summary=False)
    assert [e.stamp_ns for e in iter_events(plain, [IMG])] == [T0 + i for i in range(6)]
    plan = plan_shards([str(plain)], EvalSpec((IMG,)), shard_seconds=10)   # times by scanning: no index
    assert [s.frames for s in plan.shards] == [6]
    bomb = write_mcap(tmp_path / 'nosummary-bomb.mcap', [frames(3)], bomb_zeros=1 << 30, summary=False)
    line, rss = read_in_child(bomb, tmp_path)   # rosbags decompresses every chunk while opening such a file
    assert line.startswith('REFUSED') and 'more than its declared size of' in line, line
    assert rss < 300, f'peak RSS {rss:.0f} MiB'


def test_a_chunk_declaring_more_than_the_ceiling_is_refused_before_decompressing(tmp_path) -> None:
    bag = write_mcap(tmp_path / 'big.mcap', [[(IMG, 1_000 + i, cdr_image(T0 + i, 512, 512)) for i in range(3)]])
    with pytest.raises(BagLimitError, match=r'declares \d+ bytes decompressed, more than --max-decompressed-mb 1;'):
        list(iter_events(bag, [IMG], limits=ReadLimits(max_decompressed_mb=1)))
    assert len(list(iter_events(bag, [IMG]))) == 3   # the default cap reads it
    with pytest.raises(ConfigError, match='--max-decompressed-mb nan'):
        ReadLimits(max_decompressed_mb=float('nan'))
    with pytest.raises(ConfigError, match='--max-temp-mb 0'):
        ReadLimits(max_temp_mb=0)


def test_truncated_and_crc_broken_chunks_are_one_data_error(tmp_path) -> None:
    bag = write_mcap(tmp_path / 'crc.mcap', [frames(3)], crc=True)
    assert len(list(iter_events(bag, [IMG]))) == 3
    data = bytearray(bag.read_bytes())
    at = data.index(b'zstd') + 4 + 8 + 4            # inside the first chunk's compressed bytes
    data[at] ^= 0xFF
    (tmp_path / 'bad.mcap').write_bytes(bytes(data))
    with pytest.raises(DataError, match='corrupt|CRC|truncated|holds'):
        list(iter_events(tmp_path / 'bad.mcap', [IMG]))


# -- 2: rosbag2 compression modes ----------------------------------------------------------------------

def _folder_bag(tmp: Path, name: str, mode: str, payloads: list[tuple[int, bytes]]) -> Path:
    """A rosbag2 folder whose one MCAP holds ``payloads`` (log_ns, bytes) on IMG, declared ``mode``-compressed."""
    plain = write_bag(tmp / f'{name}-plain', [{'topic': IMG, 'raw': raw, 'log': log} for log, raw in payloads])
    meta = yaml.safe_load((plain / 'metadata.yaml').read_text())
    info = meta['rosbag2_bagfile_information']
    info['compression_mode'], info['compression_format'] = mode, 'zstd'
    (plain / 'metadata.yaml').write_text(yaml.safe_dump(meta))
    return plain


def test_message_compressed_bags_read_and_a_message_bomb_is_refused(tmp_path) -> None:
    zc = bag_reader.zstd
    good = _folder_bag(tmp_path, 'good', 'message', [(1_000 + i, zc.compress(cdr_image(T0 + i))) for i in range(3)])
    evs = list(iter_events(good, [IMG]))
    assert [e.stamp_ns for e in evs] == [T0, T0 + 1, T0 + 2] and all(e.data is not None for e in evs)
    declared = _folder_bag(tmp_path, 'declared', 'message', [(1_000, zc.compress(bytes(1 << 30)))])  # says 1 GiB
    assert sum(f.stat().st_size for f in declared.iterdir()) < MB
    with pytest.raises(BagLimitError, match='declares 1073741824 bytes'):
        list(iter_events(declared, [IMG]))
    stream = _folder_bag(tmp_path, 'stream', 'message', [(1_000, zstd_stream(b'', 1 << 30))])      # says nothing
    line, rss = read_in_child(stream, tmp_path, cap=16)
    assert line.startswith('REFUSED') and 'more than its cap (--max-decompressed-mb) of 16777216' in line, line
    assert rss < 300, f'peak RSS {rss:.0f} MiB'      # unbounded: 2.3 GB and exit 0 (issue 24, item 2)


def _file_compressed(tmp: Path, name: str, src: Path, inner: bytes | None = None) -> Path:
    """``src`` (a plain bag folder) as a ``compression_mode: file`` bag; ``inner`` replaces its zstd file."""
    meta = yaml.safe_load((src / 'metadata.yaml').read_text())
    info = meta['rosbag2_bagfile_information']
    folder = tmp / name
    folder.mkdir()
    mcap = src / info['relative_file_paths'][0]
    data = inner if inner is not None else bag_reader.zstd.compress(mcap.read_bytes())
    (folder / (mcap.name + '.zstd')).write_bytes(data)
    info['relative_file_paths'] = [mcap.name + '.zstd']
    info['compression_mode'], info['compression_format'] = 'file', 'zstd'
    (folder / 'metadata.yaml').write_text(yaml.safe_dump(meta))
    return folder


def test_file_compressed_bag_is_decompressed_once_per_process_and_removed(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(bag_reader.tempfile, 'tempdir', str(tmp_path / 'tmp'))
    (tmp_path / 'tmp').mkdir()
    src = write_bag(tmp_path / 'src', [{'topic': t, 'rgb': np.full((8, 16, 3), 40, np.uint8), 'stamp': T0 + i,
                                        'label': np.zeros((8, 16), np.uint8), 'log': (i + 1) * 10**9}
                                       for i in range(40) for t in (IMG, LAB)])
    bag = _file_compressed(tmp_path, 'filebag', src)
    calls = []
    real = bag_reader.decompress_file
    monkeypatch.setattr(bag_reader, 'decompress_file', lambda *a: (calls.append(a[0]), real(*a))[1])
    spec = EvalSpec((IMG,), (LAB,))
    assert [s.frames for s in plan_shards([str(bag)], spec).shards] == [40] and not calls   # metadata.yaml only
    plan = plan_shards([str(bag)], spec, shard_seconds=10.0)   # slicing needs the image times: one copy ...
    assert len(plan.shards) == 4 and [s.frames for s in plan.shards] == [10, 10, 10, 10] and len(calls) == 1
    assert not list((tmp_path / 'tmp').glob('evit-ros-bag-*'))   # ... removed before the shards run
    calls.clear()
    total = 0
    for shard in plan.shards:   # every slice and label margin of the bag, in one process
        if shard.start_ns is not None:
            list(iter_events(bag, [IMG], [LAB], start_ns=shard.start_ns - 5 * 10**9, stop_ns=shard.start_ns,
                             labels_only=True))
        evs = list(iter_events(bag, [IMG], [LAB], start_ns=shard.start_ns, stop_ns=shard.stop_ns))
        total += sum(1 for e in evs if e.topic == IMG)
    assert total == 40 and len(calls) == 1, calls          # decompressed once, not once per slice and margin
    left = list((tmp_path / 'tmp').glob('evit-ros-bag-*'))
    assert len(left) == 1 and (left[0] / 'metadata.yaml').is_file()
    bag_reader.release_temp()
    assert not list((tmp_path / 'tmp').glob('evit-ros-bag-*'))


def test_a_file_compression_bomb_stops_at_the_temp_cap_and_leaves_nothing(tmp_path) -> None:
    src = write_bag(tmp_path / 'src', [{'topic': IMG, 'raw': cdr_image(T0), 'log': 1_000}])
    bag = _file_compressed(tmp_path, 'bomb', src, zstd_stream(b'', 1 << 30))
    assert sum(f.stat().st_size for f in bag.iterdir()) < MB
    code = '''
        from evit_ros.eval import bag_reader
        from evit_ros.eval.bags import iter_events
        from evit_ros.eval.bag_reader import ReadLimits
        from evit_ros.errors import DataError
        bag_reader.FILE_FLOOR = 8 << 20   # the 256 MiB floor of the ratio bound, scaled down for a fast test
        try:
            list(iter_events({bag!r}, ['{img}'], limits=ReadLimits(max_temp_mb={cap})))
        except DataError as exc:
            print('REFUSED', exc)
        '''
    for cap, why in ((16, 'more than --max-temp-mb;'), (8192, 'more than 1000 times its compressed size (')):
        rc, out, rss = child(code.format(bag=str(bag), img=IMG, cap=cap), tmp_path)
        assert rc == 0 and 'REFUSED' in out and why in out, out
        assert rss < 300
        assert not list(tmp_path.glob('evit-ros-bag-*'))   # the partial copy is gone (unbounded: 8 GiB in 30 s)


def test_a_killed_process_leaves_a_copy_the_next_run_removes(tmp_path) -> None:
    stale = tmp_path / 'evit-ros-bag-999999999-x'
    stale.mkdir()
    (stale / 'big.mcap').write_bytes(b'0' * 1024)
    mine = tmp_path / f'evit-ros-bag-{os.getpid()}-y'
    mine.mkdir()
    assert bag_reader.sweep_stale_temp(str(tmp_path)) == [stale]
    assert not stale.exists() and mine.exists()


# -- 3: only regular files ------------------------------------------------------------------------------

def test_fifos_devices_and_links_out_of_the_bag_are_refused_without_hanging(tmp_path) -> None:
    good = write_bag(tmp_path / 'good', [{'topic': IMG, 'raw': cdr_image(T0), 'log': 1_000}])
    cases = {}
    os.mkfifo(tmp_path / 'bag.mcap')
    cases['fifo file'] = tmp_path / 'bag.mcap'
    for name, make in (('fifo metadata', lambda m: os.mkfifo(m)),
                       ('dev zero metadata', lambda m: m.symlink_to('/dev/zero')),
                       ('metadata out of the folder', lambda m: m.symlink_to(good / 'metadata.yaml'))):
        d = tmp_path / name.replace(' ', '_')
        d.mkdir()
        for f in good.iterdir():
            if f.name != 'metadata.yaml':
                (d / f.name).write_bytes(f.read_bytes())
        make(d / 'metadata.yaml')
        cases[name] = d
    storage = tmp_path / 'storage_link'
    storage.mkdir()
    (storage / 'metadata.yaml').write_bytes((good / 'metadata.yaml').read_bytes())
    for f in good.glob('*.mcap'):
        (storage / f.name).symlink_to(f)
    cases['storage out of the folder'] = storage
    code = '''
        import sys
        from evit_ros.eval.bags import iter_events
        from evit_ros.errors import DataError
        for p in sys.argv[1:]:
            try:
                list(iter_events(p, ['/front/image_raw']))
                print('READ', p)
            except DataError as exc:
                print('REFUSED', exc)
        '''
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, '-c', textwrap.dedent(code), *map(str, cases.values())], env=env,
                         capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert len(out) == len(cases) and all(line.startswith('REFUSED') for line in out), out
    assert 'is a FIFO' in out[0] and 'is a FIFO' in out[1] and 'link leading out' in out[2], out
    assert 'link leading out' in out[3] and 'link leading out' in out[4], out
    inside = tmp_path / 'inside'   # a link inside the bag folder is fine
    inside.mkdir()
    for f in good.iterdir():
        (inside / ('real_' + f.name if f.name == 'metadata.yaml' else f.name)).write_bytes(f.read_bytes())
    (inside / 'metadata.yaml').symlink_to('real_metadata.yaml')
    assert len(list(iter_events(inside, [IMG]))) == 1


# -- 4: shard planning over where the frames are --------------------------------------------------------

def test_a_stray_message_at_1_ns_does_not_stretch_the_plan(tmp_path) -> None:
    msgs = [('/tf_static', 1, cdr_image(0))] + frames(10, start_log=T0, period=50_000_000)
    bag = write_mcap(tmp_path / 'stray.mcap', [msgs])
    spec = EvalSpec((IMG,))
    with open_reader(bag) as r:
        assert r.start_time == 1   # the bag's log span is decades ...
        assert list(image_log_times(r, [IMG])) == [T0 + i * 50_000_000 for i in range(10)]
    plan = plan_shards([str(bag)], spec, shard_seconds=600)   # ... the images' is 0.5 s: one shard, at once
    assert len(plan.shards) == 1 and plan.shards[0].frames == 10


def test_an_image_outlier_gives_two_shards_and_empty_slices_are_skipped(tmp_path) -> None:
    msgs = [(IMG, 1, cdr_image(T0 - 1))] + frames(10, start_log=T0, period=50_000_000)
    bag = write_mcap(tmp_path / 'outlier.mcap', [msgs])
    plan = plan_shards([str(bag)], EvalSpec((IMG,)), shard_seconds=600)
    assert [(s.start_ns, s.stop_ns, s.frames) for s in plan.shards] == [(None, 1 + (T0 - 1) // (600 * 10**9) *
                                                                         600 * 10**9, 1), (1 + (T0 - 1) // (
                                                                             600 * 10**9) * 600 * 10**9, None, 10)]


def test_an_absurd_plan_is_refused_with_one_line(tmp_path, monkeypatch) -> None:
    import evit_ros.eval.shards as shards
    monkeypatch.setattr(shards, 'MAX_SHARDS', 3)
    bag = write_mcap(tmp_path / 'long.mcap', [frames(6, start_log=T0, period=11 * 10**9)])
    with pytest.raises(ConfigError, match=r'--shard-seconds 10 plans more than 3 shards .* alone: 6\)'):
        plan_shards([str(bag)], EvalSpec((IMG,)), shard_seconds=10)


def test_sqlite_bag_times_come_from_the_database(tmp_path) -> None:
    bag = write_bag(tmp_path / 'db', [{'topic': IMG, 'raw': cdr_image(T0 + i), 'log': (i + 1) * 20 * 10**9}
                                      for i in range(5)], storage='sqlite3')
    plan = plan_shards([str(bag)], EvalSpec((IMG,)), shard_seconds=30)
    assert [s.frames for s in plan.shards] == [2, 1, 2]


# -- 5: memory bounded by the layout --------------------------------------------------------------------

def _layouts(tmp: Path, n: int = 256, size: int = 256 * 1024, k: int = 32) -> tuple[Path, Path]:
    """The same n frames in time-ordered chunks and in k chunks that each span the whole drive."""
    msgs = [(IMG, 10**9 + i * 10**7, cdr_image(T0 + i, 256, size // 768, i % 250)) for i in range(n)]
    per = n // k
    ordered = write_mcap(tmp / 'ordered.mcap', [msgs[j * per:(j + 1) * per] for j in range(k)])
    spanning = write_mcap(tmp / 'spanning.mcap', [msgs[j::k] for j in range(k)])
    return ordered, spanning


def test_chunks_spanning_the_whole_drive_are_merged_in_order_within_the_budget(tmp_path, monkeypatch) -> None:
    ordered, spanning = _layouts(tmp_path, n=64, size=24 * 1024, k=8)
    monkeypatch.setattr(bag_reader, 'MERGE_BUDGET', 200 * 1024)    # 1.5 MB of frames: 8+ windows, some split
    with open_reader(spanning) as r:
        got = [(t, bytes(d)) for _c, t, d in r.messages(r.connections)]
    with open_reader(ordered) as r:
        want = [(t, bytes(d)) for _c, t, d in r.messages(r.connections)]
    assert got == want and len(got) == 64
    with open_reader(spanning) as r:    # a time range reads just that range
        assert [t for _c, t, _d in r.messages(r.connections, start=want[10][0], stop=want[20][0])] == \
            [t for t, _ in want[10:20]]


READ_RAW = '''
from evit_ros.eval import bag_reader
from evit_ros.eval.bags import open_reader
{plain}
with open('/proc/self/clear_refs', 'w') as f:   # peak RSS from here on: imports are not the reading's
    f.write('5')
n = 0
with open_reader({bag!r}) as r:
    for _c, _t, d in r.messages(r.connections):
        n += 1
hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0]
print('READ', n, int(hwm) / 1024)
'''


@pytest.mark.skipif(not Path('/proc/self/clear_refs').exists(), reason='needs Linux /proc to reset the peak RSS')
def test_peak_memory_of_both_layouts_is_the_same(tmp_path) -> None:
    ordered, spanning = _layouts(tmp_path)   # 64 MiB of frames in 32 chunks of 2 MiB
    rss = {}
    small = 'bag_reader.MERGE_BUDGET = 8 << 20'   # the default 64 MiB scaled down with the bag
    for name, bag, plain in (('ordered', ordered, small), ('spanning', spanning, small),
                             ('all_held', spanning, 'bag_reader.MERGE_BUDGET = 1 << 40')):
        rc, out, _ = child(READ_RAW.format(bag=str(bag), plain=plain), tmp_path)
        assert rc == 0 and 'READ 256' in out, out
        rss[name] = float(out.split()[-1])
    # holding every overlapping chunk (rosbags' merge, or an unlimited budget) takes the 64 MiB at once
    assert rss['all_held'] > rss['ordered'] + 40, rss
    assert rss['spanning'] < rss['ordered'] + 16, rss
    print('peak RSS while reading (MiB):', rss)


# -- 13: odd but valid inputs ---------------------------------------------------------------------------

def test_sqlite_bag_in_a_folder_with_uri_characters_opens(tmp_path) -> None:
    plain = write_bag(tmp_path / 'bag', [{'topic': IMG, 'raw': cdr_image(T0), 'log': 1_000}], storage='sqlite3')
    odd = tmp_path / 'drive#1 50%2F?x'
    odd.mkdir()
    plain.rename(odd / 'bag')
    for p in (odd / 'bag', next((odd / 'bag').glob('*.db3'))):   # the folder and the bare .db3
        evs = list(iter_events(p, [IMG]))
        assert [e.stamp_ns for e in evs] == [T0] and evs[0].data is not None


# -- the caps travel from the command line to every shard -----------------------------------------------

def test_the_spec_carries_the_caps_to_the_shards(tmp_path) -> None:
    from eval_support import RedSegmenter

    from evit_ros.eval.runner import evaluate_bag
    bag = write_mcap(tmp_path / 'big.mcap', [[(IMG, 1_000 + i, cdr_image(T0 + i, 512, 512)) for i in range(3)]])
    spec = EvalSpec((IMG,), read_limits=ReadLimits(max_decompressed_mb=1), progress=False)
    with pytest.raises(BagLimitError, match='--max-decompressed-mb 1;'):
        evaluate_bag(str(bag), spec, RedSegmenter(), 19)
    state = evaluate_bag(str(bag), EvalSpec((IMG,), progress=False), RedSegmenter(), 19)
    assert state.counters['frames'] == 3


@pytest.mark.parametrize('flag', ['--max-decompressed-mb', '--max-temp-mb'])
def test_cli_refuses_a_bad_cap_before_loading_anything(tmp_path, flag, capsys) -> None:
    from evit_ros.cli.main import main
    assert main(['eval', '--bag', str(tmp_path / 'none'), '--image-topic', IMG, flag, '-1',
                 '--report', str(tmp_path / 'rep')]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f'evit-ros eval: error: {flag} -1.0 must be a number of MiB in [1, 1073741824]']
    assert not (tmp_path / 'rep').exists()
