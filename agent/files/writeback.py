"""Starting the disk writeback of a file while it is still being written.

A transfer ends with ``fsync`` before its rename. Left alone, the kernel keeps a whole
1 GiB in dirty pages (below ``vm.dirty_background_ratio``) and that final fsync writes it
all while the client waits. :class:`Writeback` asks for the writeback of each completed
stretch with ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which only starts the I/O and
returns, so the disk works during the transfer and the fsync finds little left to do.
Without the call (not Linux, no libc symbol) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


__all__ = ["Writeback"]

SYNC_FILE_RANGE_WRITE = 2
STEP = 32 << 20


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


class Writeback:
    """Tracks how far ``fd`` was written and starts writeback every ``step`` bytes."""

    def __init__(self, fd: int, start: int = 0, step: int = STEP) -> None:
        self.fd = fd
        self.flushed = start
        self.step = step
        self._call = _sync_file_range()

    def wrote(self, end: int) -> None:
        """The file now holds data up to offset ``end``."""
        if self._call is not None and end - self.flushed >= self.step:
            # Best effort: an error only means the final fsync does all the work.
            self._call(self.fd, self.flushed, end - self.flushed, SYNC_FILE_RANGE_WRITE)
            self.flushed = end
