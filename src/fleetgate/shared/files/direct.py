"""A transferred file's bytes between the disk and a buffer, around the page cache.

A transfer reads or writes each byte of a file once. Through the page cache that costs a
page allocation and a copy per 4 KiB, and for a written file the writeback after it;
measured (Linux 6.18, ext4, a VM, 1 GiB, page cache dropped first): a buffered read 1.9-3.0
s with 1.1-1.3 s of system time, the same read with ``O_DIRECT`` 0.8-1.3 s with 0.05 s; a
buffered write and fsync 2.3-3.5 s with 1.2-1.6 s of system time, direct 0.7-1.1 s with
0.1 s. So:

- :class:`DirectWriter` writes a received file with ``O_DIRECT``: it gathers the incoming
  bytes in a page-aligned buffer and writes whole blocks; the last partial block is written
  through the page cache. The file is still fsynced by its owner at the end (``O_DIRECT``
  does not flush the disk's own cache).
- :class:`CacheAwareReader` reads a file to send: what is already in the page cache (a
  file just written, or read again) is read from there, the rest with ``O_DIRECT``. The
  cached part is measured with ``cachestat`` (Linux 6.5+); where that does not exist,
  every read goes through the page cache, as before.

Both flip ``O_DIRECT`` on the descriptor they were given (``F_SETFL``: the flag belongs to
the open file description) and fall back to the page cache for good when the file system
refuses it (``EINVAL``: ramfs, some FUSE and network file systems) or a direct transfer
fails the same way (an alignment the device does not accept). Neither is thread-safe:
each is driven by one thread at a time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import mmap
import os
from typing import Any

from fleetgate.shared.files.writeback import WriteBehind


__all__ = ["ALIGN", "CacheAwareReader", "DirectWriter", "align_down", "align_up", "cached_pages"]

ALIGN = 4096
"""Offsets, lengths and buffer addresses of direct transfers are multiples of this (the
logical block size of any disk in use is 512 or 4096 bytes)."""

WRITE_BLOCK = 4 << 20
"""Bytes gathered before one direct write."""

BUFFERED_PIECE = 256 * 1024
"""Most bytes handed to one buffered write (see ``transfer.WRITE_PIECE_BYTES``)."""

_NR_CACHESTAT = 451
"""``cachestat``'s number, the same on every architecture (asm-generic, Linux 6.5)."""


def align_down(value: int) -> int:
    """``value`` rounded down to a multiple of :data:`ALIGN`."""
    return value - value % ALIGN


def align_up(value: int) -> int:
    """``value`` rounded up to a multiple of :data:`ALIGN`."""
    return align_down(value + ALIGN - 1)


def _set_direct(fd: int, on: bool) -> bool:
    """Switch ``O_DIRECT`` on ``fd``; False when the file system refuses it."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    wanted = flags | os.O_DIRECT if on else flags & ~os.O_DIRECT
    if wanted == flags:
        return True
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, wanted)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True


@functools.cache
def _cachestat() -> Any:
    """``syscall`` from the C library, set up for ``cachestat``, or None."""
    import ctypes  # only when a file is transferred

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    function = getattr(libc, "syscall", None)
    if function is None:
        return None
    range_type = ctypes.c_uint64 * 2  # struct cachestat_range {off, len}
    stat_type = ctypes.c_uint64 * 5  # struct cachestat {nr_cache, nr_dirty, ...}
    return function, range_type, stat_type, ctypes


def cached_pages(fd: int, offset: int, length: int) -> int | None:
    """How many pages of ``fd``'s ``[offset, offset + length)`` are in the page cache, or
    None when the kernel cannot tell (before Linux 6.5, or not for this file)."""
    loaded = _cachestat()
    if loaded is None:
        return None
    function, range_type, stat_type, ctypes = loaded
    span, stats = range_type(offset, length), stat_type()
    if function(_NR_CACHESTAT, fd, ctypes.byref(span), ctypes.byref(stats), 0) != 0:
        return None
    return int(stats[0])


class CacheAwareReader:
    """Reads ``fd`` in chunks of up to ``chunk`` bytes: from the page cache what is there,
    with ``O_DIRECT`` what is not.

    Args:
        fd: a regular file open for reading (not owned; ``O_DIRECT`` is off again after
            :meth:`close`).
        chunk: the most bytes one :meth:`read` returns (rounded up to :data:`ALIGN`).
        buffers: how many buffers the reads take turns in: a view returned by
            :meth:`read` stays valid for ``buffers - 1`` more reads.
    """

    def __init__(self, fd: int, chunk: int, buffers: int = 1) -> None:
        self.fd = fd
        self.chunk = align_up(chunk)
        self._size = os.fstat(fd).st_size
        # One block more than a chunk: a read that starts inside a block reads all of it.
        size = self.chunk + ALIGN
        self._buf = mmap.mmap(-1, size * buffers)
        self._views = [memoryview(self._buf)[i * size : (i + 1) * size] for i in range(buffers)]
        self._next = 0
        self._view = self._views[0]
        self._direct = False
        # Without cachestat nothing tells cached pages apart: all through the cache.
        self._may_direct = cached_pages(fd, 0, 1) is not None

    def read(self, position: int) -> memoryview:
        """The bytes from ``position`` on (empty at the end of the file), in the next of
        the reader's buffers."""
        self._view = self._views[self._next]
        self._next = (self._next + 1) % len(self._views)
        if self._may_direct and not self._cached(position):
            view = self._read_direct(position)
            if view is not None:
                return view
        self._switch(False)
        n = os.preadv(self.fd, [self._view[: self.chunk]], position)
        return self._view[:n]

    def _cached(self, position: int) -> bool:
        """Whether every page of the next chunk that lies in the file is cached."""
        first = position // mmap.PAGESIZE
        end = min(position + self.chunk, max(self._size, position + 1))
        pages = -(-end // mmap.PAGESIZE) - first
        cached = cached_pages(self.fd, first * mmap.PAGESIZE, pages * mmap.PAGESIZE)
        return cached is None or cached >= pages

    def _read_direct(self, position: int) -> memoryview | None:
        """The next chunk read with ``O_DIRECT``, or None (then never again)."""
        start = align_down(position)
        head = position - start
        if not self._switch(True):
            return None
        try:
            n = os.preadv(self.fd, [self._view[: align_up(head + self.chunk)]], start)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._may_direct = False
            return None
        return self._view[head : max(head, min(n, head + self.chunk))]

    def _switch(self, direct: bool) -> bool:
        if direct == self._direct:
            return True
        if not _set_direct(self.fd, direct):
            self._may_direct = False
            return False
        self._direct = direct
        return True

    def close(self) -> None:
        """Turn ``O_DIRECT`` off again and free the buffer."""
        with contextlib.suppress(OSError):
            self._switch(False)
        for view in self._views:
            view.release()
        with contextlib.suppress(BufferError):  # a caller still holds a view: GC frees it
            self._buf.close()


class DirectWriter:
    """Writes a file from ``offset`` on, in order, with ``O_DIRECT`` where it can.

    Bytes are gathered in a page-aligned buffer and written a whole number of blocks at a
    time; :meth:`flush` writes what is left (through the page cache) and turns
    ``O_DIRECT`` off again. Where the file system refuses direct writes, every write goes
    through the page cache with write-behind (``WriteBehind``), as before.

    Args:
        fd: the file, open for reading and writing (not owned).
        offset: where the writes start; the file holds its earlier bytes (a resume).
        drop: for the page-cache fallback, ``WriteBehind``'s ``drop``.
    """

    def __init__(self, fd: int, offset: int, *, drop: bool) -> None:
        self.fd = fd
        self.position = offset
        """The file offset of the next byte given to :meth:`write`."""
        self._behind = WriteBehind(fd, offset, drop=drop)
        self._buf = mmap.mmap(-1, WRITE_BLOCK)
        self._view = memoryview(self._buf)
        self._base = align_down(offset)
        self._staged = offset - self._base
        if self._staged:
            # A resumed file ends inside a block: that block is written again, whole.
            got = os.preadv(fd, [self._view[: self._staged]], self._base)
            if got != self._staged:
                raise OSError(errno.EIO, "the file is shorter than the offset to write at")
        self._direct = _set_direct(fd, True)

    @property
    def direct(self) -> bool:
        """Whether writes still bypass the page cache."""
        return self._direct

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` next (the last partial block stays buffered until more comes)."""
        view = memoryview(data).cast("B")
        while view:
            if not self._direct:
                self._write_buffered(view, self.position)
                self.position += len(view)
                return
            room = WRITE_BLOCK - self._staged
            taken = min(room, len(view))
            self._view[self._staged : self._staged + taken] = view[:taken]
            self._staged += taken
            self.position += taken
            view = view[taken:]
            if self._staged == WRITE_BLOCK:
                self._write_blocks()

    def write_aligned(self, data: memoryview) -> None:
        """Write ``data`` next, from a buffer that starts at a page-aligned address (an
        ``mmap``'s): its whole blocks go to the disk straight from it, without the copy
        into the writer's buffer, when the file position is block-aligned; otherwise, and
        for the partial block at its end, as :meth:`write`."""
        whole = align_down(len(data)) if self._direct and self._staged == 0 else 0
        done = 0
        while done < whole:
            try:
                written = os.pwrite(self.fd, data[done:whole], self.position)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._fallback()  # nothing staged: the rest goes through the page cache
                break
            done += written
            self.position += written
            self._base = self.position
            if written % ALIGN:  # a partial block written: the rest cannot go direct
                self._fallback()
                break
        if done < len(data):
            self.write(data[done:])

    def _write_blocks(self) -> None:
        """Write the whole blocks gathered; keep the partial one at the buffer's start."""
        whole = align_down(self._staged)
        done = 0
        while done < whole:
            try:
                done += os.pwrite(self.fd, self._view[done:whole], self._base + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._base += done
                self._staged -= done
                self._view[: self._staged] = self._view[done : done + self._staged]
                self._fallback()
                return
            if done % ALIGN:  # a partial block written: the rest cannot go direct
                break
        rest = self._staged - done
        self._view[:rest] = self._view[done : self._staged]
        self._base += done
        self._staged = rest
        if done < whole:
            self._fallback()

    def _fallback(self) -> None:
        """Go through the page cache from now on; what was gathered is written first."""
        self._direct = False
        _set_direct(self.fd, False)
        staged, self._staged = self._staged, 0
        if staged:
            self._write_buffered(self._view[:staged], self._base)

    def _write_buffered(self, view: memoryview, position: int) -> None:
        while view:
            written = os.pwrite(self.fd, view[:BUFFERED_PIECE], position)
            view, position = view[written:], position + written
        self._behind.written(position)

    def flush(self) -> None:
        """Write everything given so far and turn ``O_DIRECT`` off (call before the
        owner's fsync; writing may go on after it, through the page cache)."""
        if self._direct:
            self._write_blocks()
            if self._direct:
                self._fallback()

    def close(self) -> None:
        """Turn ``O_DIRECT`` off and free the buffer (unflushed bytes are lost:
        :meth:`flush` first). The descriptor is as it was given, for whoever reads or
        writes it next (a resumed transfer hashes its prefix through it)."""
        if self._direct:
            self._direct = False
            with contextlib.suppress(OSError):
                _set_direct(self.fd, False)
        self._view.release()
        with contextlib.suppress(BufferError):
            self._buf.close()
