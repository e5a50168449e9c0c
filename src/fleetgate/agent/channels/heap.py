"""Keeping the C heap's pages between bursts of channel data.

Bulk channels (a terminal printing a large file, a tunnel stream, a file transfer) build
and drop buffers of hundreds of kilobytes at a high rate: each frame read, encoded into a
recording and sent is a few fresh ``bytes`` objects. glibc's defaults serve allocations
above its (dynamic) mmap threshold with a fresh ``mmap`` and give the top of the heap
back to the kernel as soon as 128 KiB-1 MiB of it is free, so every burst faults its pages
in again: half of the agent's CPU time during ``cat`` of a large file in a terminal went
to page faults.

:func:`keep_heap` raises both thresholds once per process, when the first channel is
served (an agent that never serves one keeps the defaults): buffers up to
:data:`MMAP_THRESHOLD` come from the heap, and at most :data:`TRIM_THRESHOLD` bytes of
free heap stay mapped after a burst (a bound on what this costs in resident memory).
Other C libraries (musl) have no ``mallopt``: nothing happens there.
"""

from __future__ import annotations

import ctypes
import os

import structlog


__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_heap"]

log = structlog.get_logger(__name__)

MMAP_THRESHOLD = 4 * 1024 * 1024
"""Allocations up to this size come from the heap (glibc's ``M_MMAP_THRESHOLD``)."""
TRIM_THRESHOLD = 8 * 1024 * 1024
"""Free bytes at the top of the heap kept mapped (glibc's ``M_TRIM_THRESHOLD``)."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_done = False


def keep_heap() -> bool:
    """Set the thresholds (once per process); whether they are set (glibc only)."""
    global _done
    if _done:
        return True
    _done = True
    if not _is_glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; setting either one also turns off glibc's dynamic
    # adjustment of both, which is what we want.
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    log.debug("channels.heap_thresholds", ok=ok)
    return ok


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):
        return False
