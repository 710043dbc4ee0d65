"""glibc heap settings for a process that moves megabyte frames every few milliseconds.

By default glibc serves every allocation above 128 KiB (raised on the fly up to 32 MiB) with a fresh
``mmap`` and returns it with ``munmap`` on free. A 2 MP camera frame and each output message then cost
fresh pages every frame: the kernel zeroes them and takes one fault per 4 KiB page, for the received
message, its Python copy, and every message converted and serialized for publishing. Measured with
``python -m evit_ros.ros.bench_node``: a node that only receives a 1024x2048 rgb8 frame and publishes a
pre-built mask took 14-31 ms to receive the frame with the defaults and 6-9 ms with the heap keeping
its buffers (see the README's measurements).

:func:`keep_frame_buffers` makes such buffers come from the heap and stay there for reuse (bounded by
the largest working set the process has had); :func:`release_free_heap` returns free heap memory to the
OS, which the node does after an outlier (larger) frame. Both are no-ops where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above 32 MiB on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): 4K RGB frames
# (36 MB) still get their own mapping, which is what an outlier frame should get anyway.
MMAP_THRESHOLD_BYTES = 32 << 20
# free memory at the top of a heap is given back only above this: a few frames' worth of buffers stay
TRIM_THRESHOLD_BYTES = 128 << 20

_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None)
    return _LIBC


def keep_frame_buffers(mmap_threshold: int = MMAP_THRESHOLD_BYTES, trim_threshold: int = TRIM_THRESHOLD_BYTES) -> bool:
    """Serve frame-sized allocations from the heap and keep freed ones for reuse; True when glibc took both."""
    try:
        libc = _libc()
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))
    except (OSError, AttributeError):   # not glibc
        return False


def release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``): after an outlier frame, RSS goes back down."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: nothing to do
        pass


__all__ = ['keep_frame_buffers', 'release_free_heap']
