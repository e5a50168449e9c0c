"""glibc heap settings for processes that move bulk data (agent channels, agentctl cp).

Bulk channels (a terminal printing a large file, a tunnel stream, a file transfer) build
and drop buffers of hundreds of kilobytes to a few megabytes at a high rate: the bytes of
every frame received, the masked copy of every frame sent, what a recording encodes.
glibc's defaults serve allocations above its (dynamic) mmap threshold with a fresh
``mmap`` (a page fault per 4 KiB page, the kernel zeroing each) and give the top of the
heap back to the kernel as soon as 128 KiB-1 MiB of it is free, so every burst faults its
pages in again. Measured: half of the agent's CPU during ``cat`` of a large file in a
terminal went to page faults; masking 512 MiB of 2 MiB frames cost 0.64 s of CPU that
way and 0.03 s from the heap.

:func:`keep_large_buffers` (once per process, when the first bulk channel is served: an
idle agent keeps the defaults and never loads ctypes) serves blocks up to
:data:`MMAP_THRESHOLD` from the heap and keeps at most :data:`TRIM_THRESHOLD` bytes of
free heap mapped after a burst, a bound on what this costs in resident memory;
:func:`trim_heap` gives the free heap back after a transfer. Other C libraries (musl)
have no ``mallopt``: nothing changes there.
"""

from __future__ import annotations

import functools
import os
from typing import Any


__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_large_buffers", "libc", "trim_heap"]

MMAP_THRESHOLD = 16 << 20
"""Blocks up to this size come from the heap (glibc's ``M_MMAP_THRESHOLD``; frames are
at most a few MiB)."""
TRIM_THRESHOLD = 8 << 20
"""Free bytes at the top of the heap kept mapped after a burst (``M_TRIM_THRESHOLD``)."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def libc() -> Any:
    """glibc's functions (loaded once, shared with ``files.writeback``), or None (another C
    library, or none loadable)."""
    try:
        if os.confstr("CS_GNU_LIBC_VERSION") is None:
            return None
    except (ValueError, OSError):
        return None
    import ctypes  # here: an agent that never moves bulk data does not load it

    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


@functools.cache
def keep_large_buffers() -> bool:
    """Set both thresholds (process-wide, once); whether they are set (glibc only)."""
    mallopt = getattr(libc(), "mallopt", None)
    if mallopt is None:
        return False
    # mallopt returns 1 on success; setting either also turns off glibc's dynamic
    # adjustment of both, which is what is wanted.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def trim_heap() -> None:
    """Give the free memory of the heap back to the system (``malloc_trim``)."""
    trim = getattr(libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)
