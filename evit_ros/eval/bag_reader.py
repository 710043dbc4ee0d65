"""Bounded reading of rosbag2 bags: what ``rosbags`` reads, with caps a hostile or odd bag cannot get past.

``rosbags`` parses the formats (metadata.yaml, MCAP summary and index, sqlite3 schema) and this module wraps
or replaces every piece of it that could exhaust memory or disk, or hang:

* **Files.** Only regular files and folders are opened: a FIFO, a device or a link leading out of the bag
  folder (``metadata.yaml`` -> ``/dev/zero``) is refused by name before anything is read; files this module
  opens itself are opened with ``O_NONBLOCK`` and checked with ``fstat`` (a FIFO cannot block the open).
* **MCAP chunks** (``rosbags``' ``McapReader.messages`` is replaced): each chunk is decompressed with a
  streaming zstd/lz4 decompressor whose output is capped at the chunk's declared uncompressed size (never
  above ``max_decompressed_mb``), so a chunk of 3 GiB of zeros declaring 262 KB stops after 262 KB. Chunks
  are merged in log-time order holding at most :data:`MERGE_BUDGET` bytes of messages at once: chunks whose
  time ranges overlap (e.g. every chunk spanning the whole drive) are read in time windows, each window
  re-reading the chunks it overlaps, instead of all being held open together.
* **compression_mode: message** (``DirectoryReader.messages`` is replaced): every message is decompressed
  with the same cap (and its zstd frame's declared content size, when present).
* **compression_mode: file** (``DirectoryReader``'s unbounded copy to a temporary folder is never run): the
  storage files are decompressed in 1 MiB pieces into a private temporary bag (at most ``max_temp_mb``,
  refused beyond it), once per process and reused by every slice and label margin of that bag, removed when
  another bag is opened, at exit, and (for a killed process) by the next run.
* **sqlite3**: the database path is percent-escaped in SQLite's ``file:`` URI (``rosbags`` puts it in raw,
  so a folder named ``drive#1 50%2F`` was "not a bag").
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable, Collection, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, BinaryIO
from urllib.parse import quote

import numpy as np

from evit_ros.errors import ConfigError, DataError
from evit_ros.fileio import pid_alive

if sys.version_info >= (3, 14):
    from compression import zstd  # novermin
else:  # pragma: no cover - the backport rosbags itself depends on below 3.14
    from backports import zstd

MB = 1 << 20
MERGE_BUDGET = 64 * MB        # message bytes held at once when merging overlapping MCAP chunks
METADATA_MAX = 16 * MB        # a metadata.yaml larger than this is not a rosbag2 metadata file
TEMP_PREFIX = 'evit-ros-bag-'
FILE_RATIO = 1000             # a storage file decompressing to more than 1000x its size (and 256 MiB) is a bomb
FILE_FLOOR = 256 * MB
_PIECE = MB                   # streaming step for decompression to disk
_STEP = 16 * MB                # streaming step for decompression in memory


@dataclass(frozen=True)
class ReadLimits:
    """Caps of bag reading (picklable: travels with the eval spec to every worker)."""

    max_decompressed_mb: float = 128.0   # one MCAP chunk or one message, decompressed in memory
    max_temp_mb: float = 8192.0          # one file-compressed bag's storage files decompressed on disk

    def __post_init__(self) -> None:
        for name, val, lo in (('--max-decompressed-mb', self.max_decompressed_mb, 1.0),
                              ('--max-temp-mb', self.max_temp_mb, 1.0)):
            if not (isinstance(val, (int, float)) and math.isfinite(val) and lo <= val <= 1 << 30):
                raise ConfigError(f'{name} {val} must be a number of MiB in [{lo:g}, {1 << 30}]')

    @property
    def memory_bytes(self) -> int:
        return int(self.max_decompressed_mb * MB)

    @property
    def temp_bytes(self) -> int:
        return int(self.max_temp_mb * MB)


class BagLimitError(DataError):
    """A bag would need more memory or disk than the caps allow (a decompression bomb or a size lie)."""


# -- files -------------------------------------------------------------------------------------------------

def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, 'a FIFO'), (stat.S_ISCHR, 'a character device'),
                       (stat.S_ISBLK, 'a block device'), (stat.S_ISSOCK, 'a socket'), (stat.S_ISDIR, 'a folder')):
        if test(mode):
            return name
    return 'not a regular file'


def check_member(folder: Path, name: str, what: str) -> Path:
    """``folder/name`` as a regular file inside ``folder`` (a link may point only inside it); DataError if not."""
    p = folder / name
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        raise DataError(f'bag {folder}: {what} {p.name} is missing') from None
    except OSError as exc:
        raise DataError(f'bag {folder}: {what} {p.name} cannot be read ({exc.strerror})') from None
    if stat.S_ISLNK(st.st_mode):
        target = p.resolve()
        if not target.is_relative_to(folder.resolve()):
            raise DataError(f'bag {folder}: {what} {p.name} is a link leading out of the bag folder (to {target}); '
                            'copy the file into the bag folder')
        try:
            st = os.stat(p)
        except OSError as exc:
            raise DataError(f'bag {folder}: {what} {p.name} is a broken link ({exc.strerror})') from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f'bag {folder}: {what} {p.name} is {_kind(st.st_mode)}, not a regular file; a bag is made '
                        'of regular files only')
    return p


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading without ever blocking (a FIFO swapped in is refused, not waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_CLOEXEC', 0))
    except OSError as exc:
        raise DataError(f'bag file {path} cannot be opened ({exc.strerror})') from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f'bag file {path} is {_kind(st.st_mode)}, not a regular file')
        return os.fdopen(fd, 'rb')
    except BaseException:
        os.close(fd)
        raise


def read_metadata(folder: Path) -> dict[str, Any]:
    """The ``rosbag2_bagfile_information`` mapping of a bag folder (bounded read of a checked regular file)."""
    import yaml
    p = check_member(folder, 'metadata.yaml', 'metadata file')
    with open_regular(p) as f:
        text = f.read(METADATA_MAX + 1)
    if len(text) > METADATA_MAX:
        raise DataError(f'bag {folder}: metadata.yaml is larger than {METADATA_MAX // MB} MiB; it is not a rosbag2 '
                        'metadata file')
    try:
        doc = yaml.safe_load(text)
        info = doc['rosbag2_bagfile_information']
        names = [PurePath(str(x)).name for x in info['relative_file_paths']]
    except Exception as exc:  # noqa: BLE001 - any YAML or shape error means the same thing to the user
        raise DataError(f'bag {folder}: metadata.yaml is not rosbag2 metadata ({short_error(exc)})') from None
    if not isinstance(info, dict):
        raise DataError(f'bag {folder}: metadata.yaml is not rosbag2 metadata')
    info['relative_file_paths'] = names
    return info


def check_bag_path(path: Path) -> dict[str, Any] | None:
    """Refuse anything but a regular bag file or a bag folder of regular files; a folder's metadata, else None."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(f'bag {path} cannot be read ({exc.strerror}); pass a ROS 2 bag directory (with '
                        'metadata.yaml) or a .mcap/.db3 file') from None
    if stat.S_ISDIR(st.st_mode):
        info = read_metadata(path)
        for name in info['relative_file_paths']:
            check_member(path, name, 'storage file')
        return info
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f'bag {path} is {_kind(st.st_mode)}, not a bag file or folder; pass a ROS 2 bag directory '
                        'or a .mcap/.db3 file')
    return None


def short_error(exc: BaseException) -> str:
    """An exception as one line of at most 160 characters, for a bag error's message."""
    text = ' '.join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + '...'


# -- bounded decompression ---------------------------------------------------------------------------------

def _lz4_decompressor() -> Any:
    import lz4.frame  # type: ignore[import-untyped,unused-ignore]
    return lz4.frame.LZ4FrameDecompressor()


_DECOMPRESSORS: dict[str, Callable[[], Any]] = {'zstd': zstd.ZstdDecompressor, 'lz4': _lz4_decompressor}


def bounded_decompress(data: bytes | memoryview, compression: str, limit: int, what: str,
                       ceiling: int, declared: bool = True) -> bytes | bytearray:
    """``data`` decompressed, refusing (BagLimitError) before more than ``limit`` bytes are ever produced.

    ``limit`` is what the container declares (MCAP: the chunk's uncompressed size), ``ceiling`` the user's cap;
    output is produced in bounded steps, so memory never exceeds ``min(limit, ceiling)`` plus one step.
    """
    cap = min(limit, ceiling)
    if limit > ceiling:
        raise BagLimitError(f'{what} declares {limit} bytes decompressed, more than --max-decompressed-mb '
                            f'{ceiling / MB:g}; raise it only if the bag is trusted')
    if compression == '':
        return data if isinstance(data, bytes) else bytes(data)
    make = _DECOMPRESSORS.get(compression)
    if make is None:
        raise DataError(f'{what} uses compression {compression!r}; supported: zstd, lz4, none')
    out = bytearray()
    rest: bytes | memoryview = data
    try:
        while rest:   # a stream may hold several frames
            d = make()
            out += d.decompress(rest, max_length=min(_STEP, cap - len(out) + 1))
            while len(out) <= cap and not d.eof and not d.needs_input:   # 16 MiB at a time: no 2x transient
                out += d.decompress(b'', max_length=min(_STEP, cap - len(out) + 1))
            if len(out) > cap:
                del out[:]
                bound = 'declared size' if declared and cap == limit else 'cap (--max-decompressed-mb)'
                raise BagLimitError(f'{what} decompresses to more than its {bound} of {cap} bytes (a '
                                    'decompression bomb or a size lie); refused')
            if not d.eof:
                raise DataError(f'{what} is truncated: its {compression} stream ends early')
            rest = d.unused_data
    except (zstd.ZstdError, RuntimeError, OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f'{what} is corrupt ({short_error(exc)})') from None
    return out


def decompress_message(data: bytes | memoryview, ceiling: int, what: str) -> bytes | bytearray:
    """A rosbag2 ``compression_mode: message`` payload (zstd), capped by its frame's declared size and ``ceiling``."""
    size = None
    with contextlib.suppress(Exception):
        size = zstd.get_frame_info(bytes(data[:18])).decompressed_size
    if size is not None and size > ceiling:
        raise BagLimitError(f'{what} declares {size} bytes decompressed, more than --max-decompressed-mb '
                            f'{ceiling / MB:g}; refused')
    return bounded_decompress(data, 'zstd', ceiling if size is None else int(size), what, ceiling,
                              declared=size is not None)


def decompress_file(src: Path, dst: Path, budget: list[int], what: str, why: str = '--max-temp-mb') -> None:
    """Stream a zstd file to ``dst`` in 1 MiB pieces; ``budget[0]`` (bytes left on disk, the bound ``why``)
    shrinks, refused below 0."""
    try:
        with open_regular(src) as raw, zstd.open(raw, 'rb') as zin, open(dst, 'xb') as out:
            while True:
                piece = zin.read(_PIECE)
                if not piece:
                    return
                budget[0] -= len(piece)
                if budget[0] < 0:
                    raise BagLimitError(f'{what} decompresses to more than {why}; refused (a decompression '
                                        'bomb; for a trusted bag raise --max-temp-mb or decompress it yourself)')
                out.write(piece)
    except (zstd.ZstdError, EOFError) as exc:
        raise DataError(f'{what} is not a valid zstd file ({short_error(exc)})') from None


# -- file-compressed bags: one private decompressed copy per process --------------------------------------

_CACHE_LOCK = threading.Lock()
_SWAP_LOCK = threading.Lock()
_CACHE: dict[str, tuple[tuple[Any, ...], Path]] = {}
_SWEPT = [False]


def sweep_stale_temp(root: str | None = None) -> list[Path]:
    """Remove decompressed bags left in the temp folder by processes that no longer run (e.g. SIGKILLed)."""
    removed = []
    base = Path(root or tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for p in base.iterdir():
            m = re.fullmatch(re.escape(TEMP_PREFIX) + r'(\d+)-.*', p.name)
            if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def release_temp() -> None:
    """Remove this process's decompressed bag copies (at exit, and when another bag is opened)."""
    with _CACHE_LOCK:
        for _key, tmp in _CACHE.values():
            shutil.rmtree(tmp, ignore_errors=True)
        _CACHE.clear()


atexit.register(release_temp)
with contextlib.suppress(Exception):   # multiprocessing children leave by os._exit: atexit does not run there
    from multiprocessing import util as _mp_util
    _mp_util.Finalize(None, release_temp, exitpriority=0)


def decompressed_copy(folder: Path, info: dict[str, Any], limits: ReadLimits) -> Path:
    """A ``compression_mode: file`` bag as a plain bag folder in the temp dir, made once per process and bag."""
    import yaml
    names = info['relative_file_paths']
    files = [folder / n for n in names]
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    ident = str(folder.resolve())
    with _CACHE_LOCK:
        hit = _CACHE.get(ident)
        if hit is not None and hit[0] == key and hit[1].is_dir():
            return hit[1]
    release_temp()   # one decompressed bag per process: temp disk is at most --max-temp-mb per worker
    if not _SWEPT[0]:
        _SWEPT[0] = True
        sweep_stale_temp()
    if str(info.get('compression_format', '')).lower() != 'zstd':
        raise DataError(f'bag {folder}: compression format {info.get("compression_format")!r} is not supported '
                        '(rosbag2 file compression is zstd)')
    tmp = Path(tempfile.mkdtemp(prefix=f'{TEMP_PREFIX}{os.getpid()}-'))
    try:
        free = max(shutil.disk_usage(tmp).free - 64 * MB, 0)   # never fill the temp disk either
        packed = sum(f.stat().st_size for f in files)
        cap = min(limits.temp_bytes, free, max(FILE_FLOOR, FILE_RATIO * packed))
        why = ('--max-temp-mb' if cap == limits.temp_bytes else f'the free temp disk ({free // MB} MiB)'
               if cap == free else f'{FILE_RATIO} times its compressed size ({cap // MB} MiB)')
        budget = [cap]
        plain = []
        for f in files:
            name = f.name[:-5] if f.name.endswith('.zstd') else f.name + '.plain'
            decompress_file(f, tmp / name, budget, f'bag {folder}: file-compressed {f.name}', why)
            plain.append(name)
        meta = dict(info)
        meta.update(compression_mode='', compression_format='', relative_file_paths=plain)
        if isinstance(meta.get('files'), list):
            meta['files'] = [dict(e, path=plain[i]) if isinstance(e, dict) and i < len(plain) else e
                             for i, e in enumerate(meta['files'])]
        (tmp / 'metadata.yaml').write_text(yaml.safe_dump({'rosbag2_bagfile_information': meta}))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with _CACHE_LOCK:
        _CACHE[ident] = (key, tmp)
    return tmp


# -- readers -----------------------------------------------------------------------------------------------

def _u16(b: bytes | memoryview, o: int) -> int:
    return int.from_bytes(b[o:o + 2], 'little')


def _u32(b: bytes | memoryview, o: int) -> int:
    return int.from_bytes(b[o:o + 4], 'little')


def _u64(b: bytes | memoryview, o: int) -> int:
    return int.from_bytes(b[o:o + 8], 'little')


def _chunk_messages(buf: bytes | bytearray, wanted: Collection[int], lo: int, hi: int, what: str,
                    sink: Callable[[int, int, bytes], bool]) -> bool:
    """Feed every message record of a decompressed chunk with channel in ``wanted`` and log time in [lo, hi) to
    ``sink(log_ns, channel, data)``; stop early (return False) when the sink says so."""
    mv = memoryview(buf)
    i, n = 0, len(buf)
    while i < n:
        if i + 9 > n:
            raise DataError(f'{what}: record header truncated at byte {i}')
        op, size = buf[i], _u64(mv, i + 1)
        body = i + 9
        if size > n - body:
            raise DataError(f'{what}: record of {size} bytes at byte {i} runs past the chunk end')
        if op == 0x05:
            if size < 22:
                raise DataError(f'{what}: message record of {size} bytes is too short')
            ch, log = _u16(mv, body), _u64(mv, body + 6)
            if ch in wanted and lo <= log < hi and not sink(log, ch, bytes(mv[body + 22:body + size])):
                return False
        i = body + size
    return True


def _hold(held: list[tuple[int, int, bytes]], log: int, ch: int, data: bytes) -> bool:
    held.append((log, ch, data))
    return True


@functools.lru_cache(maxsize=8)
def _bounded_mcap(limits: ReadLimits) -> type:
    from rosbags.rosbag2.storage_mcap import McapReader

    class BoundedMcapReader(McapReader):
        LIMITS = limits

        def open(self) -> None:
            self.bio = open_regular(Path(str(self.path)))
            self.file_size = os.fstat(self.bio.fileno()).st_size
            try:
                self._open()
            except BaseException:
                with contextlib.suppress(Exception):
                    self.close()
                raise

        def _open(self) -> None:
            """rosbags' summary parsing; an MCAP without a summary is scanned by rosbags' ``meta_scan``, which
            calls the module's ``decompress``: swapped for the bounded one while this reader opens."""
            from rosbags.rosbag2 import storage_mcap
            what, ceiling = f'MCAP {self.path} chunk', self.LIMITS.memory_bytes

            def bounded(data: bytes, compression: str, size: int, crc: int) -> bytes:
                raw = bounded_decompress(data, compression, size, what, ceiling)
                if len(raw) != size:
                    raise DataError(f'{what} holds {len(raw)} bytes, not the {size} it declares')
                if crc and zlib.crc32(raw) != crc:
                    raise DataError(f'{what} fails its CRC check')
                return bytes(raw)

            with _SWAP_LOCK:
                saved = storage_mcap.decompress
                storage_mcap.decompress = bounded
                try:
                    super()._open()
                finally:
                    storage_mcap.decompress = saved

        def _chunk(self, chunk: Any) -> bytes | bytearray:
            """The decompressed payload of an indexed chunk (sizes checked against the file before reading)."""
            what = f'MCAP {self.path} chunk at byte {chunk.chunk_start_offset}'
            if chunk.compressed_size > self.file_size or chunk.chunk_start_offset > self.file_size:
                raise DataError(f'{what} claims {chunk.compressed_size} compressed bytes, more than the file has')
            if chunk.compressed_size > self.LIMITS.memory_bytes + 4096:
                raise BagLimitError(f'{what} holds {chunk.compressed_size} compressed bytes, more than '
                                    f'--max-decompressed-mb {self.LIMITS.max_decompressed_mb:g}')
            head, bio = chunk.chunk_start_offset + 9, self._io()
            bio.seek(head + 24)
            crc = _u32(bio.read(4), 0)
            bio.seek(head + 40 + len(chunk.compression.encode()))
            data = bio.read(chunk.compressed_size)
            if len(data) != chunk.compressed_size:
                raise DataError(f'{what} is truncated')
            raw = bounded_decompress(data, chunk.compression, chunk.uncompressed_size, what,
                                     self.LIMITS.memory_bytes)
            if len(raw) != chunk.uncompressed_size:
                raise DataError(f'{what} holds {len(raw)} bytes, not the {chunk.uncompressed_size} it declares')
            if crc and zlib.crc32(raw) != crc:
                raise DataError(f'{what} fails its CRC check')
            return raw

        def _io(self) -> BinaryIO:
            if self.bio is None:
                raise DataError(f'MCAP {self.path} is not open')
            return self.bio

        def messages(self, connections: Collection[Any], start: int | None = None,
                     stop: int | None = None) -> Generator[tuple[Any, int, bytes], None, None]:
            lo = -(1 << 63) if start is None else int(start)
            hi = (1 << 64) if stop is None else int(stop)
            conns = {c.id: c for c in connections}
            if not self.chunks:
                yield from self._scan(conns, lo, hi)
                return
            chunks = sorted((c for c in self.chunks if c.message_start_time < hi and c.message_end_time >= lo
                             and any(c.channel_count.get(k, 0) for k in conns)),
                            key=lambda c: (c.message_start_time, c.chunk_start_offset))
            group: list[Any] = []
            end = -(1 << 63)
            for c in chunks:   # consecutive chunks whose time ranges overlap are merged together
                if group and c.message_start_time > end:
                    yield from self._merge(group, conns, lo, hi)
                    group = []
                group.append(c)
                end = max(end, c.message_end_time)
            if group:
                yield from self._merge(group, conns, lo, hi)

        def _merge(self, group: list[Any], conns: dict[int, Any], lo: int,
                   hi: int) -> Iterator[tuple[Any, int, bytes]]:
            """Messages of overlapping chunks in log-time order, at most MERGE_BUDGET bytes held at once."""
            a = max(lo, min(c.message_start_time for c in group))
            b = min(hi, max(c.message_end_time for c in group) + 1)
            total = sum(c.uncompressed_size for c in group)
            parts = 1 if len(group) == 1 else max(1, math.ceil(total / MERGE_BUDGET))
            step = max(1, -(-(b - a) // parts))
            windows = [(w, min(w + step, b)) for w in range(a, b, step)][::-1]   # a stack, earliest on top
            while windows:
                w0, w1 = windows.pop()
                held: list[tuple[int, int, int, bytes]] = []
                size = [0]

                def keep(log: int, ch: int, data: bytes, held: list[tuple[int, int, int, bytes]] = held,
                         size: list[int] = size, w0: int = w0, w1: int = w1) -> bool:
                    held.append((log, len(held), ch, data))
                    size[0] += len(data)
                    return size[0] <= MERGE_BUDGET or len(group) == 1 or w1 - w0 <= 1

                complete = True
                for c in group:
                    if c.message_start_time < w1 and c.message_end_time >= w0:
                        if not _chunk_messages(self._chunk(c), conns, w0, w1, f'MCAP {self.path}', keep):
                            complete = False
                            break
                if not complete:   # too many bytes in this window: split it and read its halves
                    held.clear()
                    mid = w0 + (w1 - w0) // 2
                    windows += [(mid, w1), (w0, mid)]
                    continue
                held.sort(key=lambda m: (m[0], m[1]))
                for log, _i, ch, data in held:
                    yield conns[ch], log, data
                held.clear()

        def _scan(self, conns: dict[int, Any], lo: int, hi: int) -> Iterator[tuple[Any, int, bytes]]:
            """An MCAP without a chunk index, read record by record (chunks decompressed with the caps)."""
            bio, what = self._io(), f'MCAP {self.path}'
            bio.seek(self.data_start)
            previous = -(1 << 63)
            while bio.tell() < self.data_end:
                at = bio.tell()
                head = bio.read(9)
                if len(head) < 9:
                    raise DataError(f'{what}: record header truncated at byte {at}')
                op, size = head[0], _u64(head, 1)
                if size > self.data_end - at - 9:
                    raise DataError(f'{what}: record of {size} bytes at byte {at} runs past the data end')
                if op not in (0x05, 0x06):
                    bio.seek(size, 1)
                    continue
                if size > self.LIMITS.memory_bytes + 4096:
                    raise BagLimitError(f'{what}: record of {size} bytes at byte {at} is larger than '
                                        f'--max-decompressed-mb {self.LIMITS.max_decompressed_mb:g}')
                rec = bio.read(size)
                held: list[tuple[int, int, bytes]] = []
                if op == 0x05:
                    if size < 22:
                        raise DataError(f'{what}: message record of {size} bytes is too short')
                    ch, log = _u16(rec, 0), _u64(rec, 6)
                    if ch in conns and lo <= log < hi:
                        held.append((log, ch, rec[22:]))
                else:
                    if size < 40:
                        raise DataError(f'{what}: chunk record of {size} bytes is too short')
                    usize, crc, clen = _u64(rec, 16), _u32(rec, 24), _u32(rec, 28)
                    comp = bytes(rec[32:32 + clen]).decode(errors='replace')
                    dlen = _u64(rec, 32 + clen)
                    if 40 + clen + dlen > size:
                        raise DataError(f'{what}: chunk at byte {at} claims more data than its record holds')
                    raw = bounded_decompress(memoryview(rec)[40 + clen:40 + clen + dlen], comp, usize,
                                             f'{what} chunk at byte {at}', self.LIMITS.memory_bytes)
                    if len(raw) != usize:
                        raise DataError(f'{what} chunk at byte {at} holds {len(raw)} bytes, not {usize}')
                    if crc and zlib.crc32(raw) != crc:
                        raise DataError(f'{what} chunk at byte {at} fails its CRC check')
                    _chunk_messages(raw, conns, lo, hi, what, functools.partial(_hold, held))
                for log, ch, data in held:
                    if log < previous:
                        raise DataError(f'{what} has no chunk index and its messages are not in log-time order; '
                                        'rewrite it with an index (e.g. ros2 bag convert)')
                    previous = log
                    yield conns[ch], log, data

        def log_times(self, channel_ids: Collection[int]) -> np.ndarray:
            """Log times of the channels' messages from the chunk message indexes (no chunk is decompressed)."""
            if not self.chunks:   # no index: scan the records (chunks decompressed with the caps)
                conns = {c.id: c for c in self.connections if c.id in channel_ids}
                return np.fromiter((t for _c, t, _d in self._scan(conns, -(1 << 63), 1 << 64)), dtype=np.int64)
            out: list[np.ndarray] = []
            bio = self._io()
            for chunk in self.chunks:
                for ch, off in chunk.message_index_offsets.items():
                    if ch not in channel_ids or not chunk.channel_count.get(ch, 0):
                        continue
                    bio.seek(off)
                    head = bio.read(15)
                    if len(head) < 15 or head[0] != 0x07:
                        raise DataError(f'MCAP {self.path}: message index at byte {off} is not an index record')
                    n = _u32(head, 11)
                    if n % 16 or n > self.file_size:
                        raise DataError(f'MCAP {self.path}: message index at byte {off} has a bad length {n}')
                    data = bio.read(n)
                    if len(data) != n:
                        raise DataError(f'MCAP {self.path}: message index at byte {off} is truncated')
                    out.append(np.frombuffer(data, dtype='<u8').reshape(-1, 2)[:, 0].astype(np.int64))
            return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)

    return BoundedMcapReader


@functools.lru_cache(maxsize=1)
def _escaped_sqlite() -> type:
    from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader

    class EscapedSqlite3Reader(Sqlite3Reader):
        """rosbags builds ``file:{path}?immutable=1`` from the raw path: '#', '?' and '%' in it broke the URI."""

        def __init__(self, path: Any) -> None:
            super().__init__(Path(quote(str(path), safe='/')))
            self.real_path = Path(path)

        def log_times(self, topic_ids: Collection[int]) -> np.ndarray:
            ids = sorted(int(i) for i in topic_ids)
            if not ids or self.dbconn is None:
                return np.zeros(0, np.int64)
            q = f'SELECT timestamp FROM messages WHERE topic_id IN ({",".join("?" * len(ids))}) ORDER BY timestamp'
            return np.fromiter((int(r[0]) for r in self.dbconn.execute(q, ids)), dtype=np.int64)

    return EscapedSqlite3Reader


@functools.lru_cache(maxsize=8)
def _bounded_directory(limits: ReadLimits) -> type:
    from rosbags.rosbag2.reader import DirectoryReader

    class BoundedDirectoryReader(DirectoryReader):
        STORAGE_PLUGINS = {'mcap': _bounded_mcap(limits), 'sqlite3': _escaped_sqlite()}
        LIMITS = limits

        def open(self) -> None:
            info = read_metadata(Path(str(self.path)))   # the file rosbags is about to read, checked and bounded
            if str(info.get('compression_mode', '')).lower() == 'file':
                raise DataError(f'bag {self.path}: file-compressed bags are opened through open_bag()')
            super().open()

        def messages(self, connections: Collection[Any], start: int | None = None,
                     stop: int | None = None) -> Generator[tuple[Any, int, Any], None, None]:
            per_message = self.metadata.compression_mode == 'message'
            for storage in self.storages:
                conns = {}
                for sc in storage.connections:
                    mine = next((c for c in connections if c.topic == sc.topic and c.msgtype == sc.msgtype), None)
                    if mine is not None:
                        conns[sc.id] = (sc, mine)
                if not conns:
                    continue
                for sc, log, data in storage.messages([v[0] for v in conns.values()], start, stop):
                    yield conns[sc.id][1], log, (decompress_message(
                        data, self.LIMITS.memory_bytes, f'bag {self.path}: message on {sc.topic} at {log} ns')
                        if per_message else data)

        def log_times(self, topics: Collection[str]) -> np.ndarray:
            parts = [getattr(s, 'log_times')([c.id for c in s.connections if c.topic in topics])  # noqa: B009
                     for s in self.storages]   # the storages are this module's readers, which all have it
            return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    return BoundedDirectoryReader


@functools.lru_cache(maxsize=8)
def _bounded_reader(limits: ReadLimits) -> type:
    from rosbags.rosbag2 import Reader

    class BoundedReader(Reader):
        STORAGE_PLUGINS = {'dir': _bounded_directory(limits), '.mcap': _bounded_mcap(limits),
                           '.db3': _escaped_sqlite()}

    return BoundedReader


def open_bag(path: Path, limits: ReadLimits) -> Any:
    """An open rosbags-compatible Reader of ``path`` with every cap of this module applied (see the module doc).

    Raises DataError (or BagLimitError) for a path that is not a bag of regular files; rosbags' own errors
    for an unreadable bag propagate for the caller to word.
    """
    info = check_bag_path(path)
    target = path
    if info is not None and str(info.get('compression_mode', '')).lower() == 'file':
        target = decompressed_copy(path, info, limits)
    reader = _bounded_reader(limits)(target)
    reader.open()
    return reader


def file_compressed_counts(path: Path) -> dict[str, int] | None:
    """Topic -> message count of a ``compression_mode: file`` bag from its metadata.yaml alone (planning a
    bag without slicing need not decompress it); None for any other bag."""
    info = check_bag_path(path)
    if info is None or str(info.get('compression_mode', '')).lower() != 'file':
        return None
    counts: dict[str, int] = {}
    try:
        for entry in info.get('topics_with_message_count') or []:
            name = str(entry['topic_metadata']['name'])
            counts[name] = counts.get(name, 0) + int(entry['message_count'])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f'bag {path}: metadata.yaml topics_with_message_count is malformed ({short_error(exc)})') \
            from None
    return counts


def image_log_times(reader: Any, topics: Collection[str]) -> np.ndarray:
    """Sorted log times of the messages on ``topics``, from indexes where the format has them."""
    storage = reader.storage
    wanted = set(topics)
    if hasattr(storage, 'storages'):   # a bag folder: each storage file answers
        return storage.log_times(wanted)
    return storage.log_times([c.id for c in storage.connections if c.topic in wanted])
