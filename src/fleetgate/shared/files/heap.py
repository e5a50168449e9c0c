"""glibc heap settings for processes that move file chunks (pure policy, one ctypes call).

A transfer allocates and frees buffers of a megabyte or more at a high rate: the bytes
of every frame received, the masked copy of every frame sent. Above glibc's mmap
threshold (128 KiB until its dynamic adjustment kicks in, which the websockets send path
keeps defeating) each one is a fresh ``mmap``: a page fault per 4 KiB page, the kernel
zeroing every page, then ``munmap``. Measured: masking 512 MiB of 2 MiB frames costs
0.64 s of CPU that way and 0.03 s from the heap. :func:`keep_large_buffers` serves them
from the heap instead; :func:`trim_heap` gives the freed megabytes back afterwards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


__all__ = ["keep_large_buffers", "trim_heap"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
LARGEST_HEAP_BLOCK = 16 << 20
"""Blocks up to this size come from the heap (frames are at most a few MiB)."""


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


@functools.cache
def keep_large_buffers() -> bool:
    """Serve blocks up to :data:`LARGEST_HEAP_BLOCK` from the heap and keep up to twice
    that free at its top (process-wide, once). False where the C library has no
    ``mallopt`` (not glibc): nothing changes there."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, LARGEST_HEAP_BLOCK)
        and mallopt(_M_TRIM_THRESHOLD, 2 * LARGEST_HEAP_BLOCK)
    )


def trim_heap() -> None:
    """Give the free memory of the heap back to the system (``malloc_trim``)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)
