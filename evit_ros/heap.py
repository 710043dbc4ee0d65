"""glibc heap settings for a process that moves megabyte frames every few milliseconds.

glibc serves an allocation above its mmap threshold (128 KiB at start) with a fresh ``mmap``. After the
first such buffer is freed the threshold rises to that size, so later frame-sized buffers come from the
heap, but free memory at the top of the heap is returned to the OS above twice that threshold: with a
frame, its copy and the output messages freed together, most of it goes back every frame and comes back
as fresh pages the kernel zeroes, one fault per 4 KiB page (about 1,000-1,500 faults per cycle of three
6 MB buffers, ``tests/test_heap.py``). Measured with ``python -m evit_ros.bench.node``: a node that only
receives a 1024x2048 rgb8 frame and publishes a pre-built mask took 14-31 ms to receive the frame with the
defaults and 6-9 ms with the heap keeping its buffers (docs/performance.md).

:func:`keep_frame_buffers` fixes both thresholds, so frame-sized buffers come from the heap and stay there
for reuse (bounded by the largest working set the process has had); :func:`release_free_heap` returns free
heap memory to the OS, which the node does after an outlier (larger) frame. Both are no-ops where the C
library is not glibc.
"""
from __future__ import annotations

import ctypes
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above DEFAULT_MMAP_THRESHOLD_MAX (32 MiB on 64-bit, 16 MiB on 32-bit):
# 4K RGB frames (36 MB) still get their own mapping, which is what an outlier frame should get anyway.
MMAP_THRESHOLD_BYTES = min(32 << 20, (4 << 20) * ctypes.sizeof(ctypes.c_long))
# free memory at the top of a heap is given back only above this: a few frames' worth of buffers stay
TRIM_THRESHOLD_BYTES = 128 << 20

_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None)
    return _LIBC


def keep_frame_buffers(mmap_threshold: int = MMAP_THRESHOLD_BYTES, trim_threshold: int = TRIM_THRESHOLD_BYTES) -> bool:
    """Serve frame-sized allocations from the heap and keep freed ones for reuse; True when glibc took both
    settings (each is applied on its own: one refused value does not keep the other from applying)."""
    try:
        libc = _libc()
        took_mmap = bool(libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)))
        took_trim = bool(libc.mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))
        return took_mmap and took_trim
    except (OSError, AttributeError, TypeError):   # not glibc (TypeError: no CDLL(None) on Windows)
        return False


def release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``): after an outlier frame, RSS goes back down."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError, TypeError):   # not glibc: nothing to do
        pass


__all__ = ['keep_frame_buffers', 'release_free_heap']
