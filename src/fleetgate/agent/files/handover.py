"""The agent's side of a handed-over single file: it moves the bytes itself (asyncio + threads).

The worker, as the user, checks the path and opens the file (so the kernel decides what the
user may touch), then hands the descriptor over (SCM_RIGHTS, a ``handover`` frame) instead of
copying every byte through its pipes. From then on:

- an upload's chunks go from the channel to :class:`UploadSink`, which hashes and writes them
  in a thread of its own; at the client's ``end`` the worker is told what was written and
  what it hashes to, and it checks, fsyncs and renames as before;
- a download is streamed by :func:`fleetgate.agent.files.sending.send_download`: threads
  read ahead and hash while the event loop sends; the agent sends ``ready`` and ``done``.

Root's writes would not be bound by the user's disk quota or the file system's reserved
blocks (both yield to ``CAP_SYS_RESOURCE``), so the writing thread drops that capability
from its own effective set first (capabilities are per thread on Linux).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fleetgate.agent.files.hashing import hash_prefix
from fleetgate.agent.files.walk import os_error
from fleetgate.shared.errors import TransferError
from fleetgate.shared.files.direct import DirectWriter
from fleetgate.shared.files.transfer import Ledger


__all__ = [
    "UploadSink",
    "check_handed",
    "drop_capability",
    "drop_resource_override",
]

CAP_SYS_RESOURCE = 24
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def drop_resource_override() -> None:
    """Clear ``CAP_SYS_RESOURCE`` from the calling thread's effective capabilities.

    Raises:
        OSError: capget/capset failed (the caller must then not write as root).
    """
    drop_capability(CAP_SYS_RESOURCE)


def drop_capability(cap: int) -> None:
    """Clear capability number ``cap`` from the calling thread's effective set.

    Raises:
        OSError: capget/capset failed.
    """
    header = _CapHeader(_CAP_VERSION_3, 0)  # pid 0: this thread
    data = (_CapData * 2)()
    libc = _libc()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    data[cap // 32].effective &= ~(1 << (cap % 32))
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def check_handed(fd: int) -> None:
    """Refuse a handed-over descriptor that is not a regular file (nothing else is ever
    sent; a pipe could block the agent's thread)."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise TransferError("internal", "the worker handed over something else than a file")


class UploadSink:
    """Hashes and writes one upload's chunks through a handed-over descriptor.

    Each chunk is written by the sink's writing thread and hashed by its hashing thread at
    the same time (both release the GIL), while the event loop receives the next chunk;
    :meth:`put` waits for the previous chunk, so memory stays at two chunks (and the
    writer's block buffer). The writes bypass the page cache where the file system allows
    (:class:`~fleetgate.shared.files.direct.DirectWriter`): the worker's fsync then has
    nothing left to wait for. The sink owns ``fd`` (closed by :meth:`close`, after the last
    write); only the writing thread uses it.

    Args:
        fd: the temporary file, opened by the worker as the user.
        offset: bytes already in it (a resumed upload); they are hashed first.
        size: the size the client announced (None: unknown).
        limit: the largest file accepted.
    """

    def __init__(self, fd: int, offset: int, size: int | None, limit: int) -> None:
        self.ledger = Ledger(offset, size, limit)
        self._fd = fd
        self._writer: DirectWriter | None = None  # made by the writing thread
        self._hasher = hashlib.sha256()
        self._writing = ThreadPoolExecutor(1, thread_name_prefix="files-write")
        self._hashing = ThreadPoolExecutor(1, thread_name_prefix="files-hash")
        loop = asyncio.get_running_loop()
        # The prefix is hashed before any chunk (put() waits for this first).
        self._written = loop.run_in_executor(self._writing, self._start, offset)
        self._hashed: asyncio.Future[None] = self._written
        self._ended = False
        self._closed = False

    def _start(self, offset: int) -> None:
        try:
            drop_resource_override()
        except OSError as exc:
            raise TransferError("internal", f"cannot drop CAP_SYS_RESOURCE: {exc}") from None
        try:
            hash_prefix(self._fd, offset, self._hasher, bytearray(1 << 20))
            self._writer = DirectWriter(self._fd, offset, drop=False)
        except OSError as exc:
            raise os_error(exc, "the temporary file") from None

    def _write(self, chunk: bytes) -> None:
        assert self._writer is not None  # _start ran first, in this thread
        try:
            self._writer.write(chunk)
        except OSError as exc:
            raise os_error(exc, "the temporary file") from None

    def _flush(self) -> None:
        if self._writer is None:
            return
        try:
            self._writer.flush()
        except OSError as exc:
            raise os_error(exc, "the temporary file") from None

    async def _previous(self) -> None:
        """Until the previous chunk is written and hashed (its write error raised)."""
        await asyncio.wait([self._written, self._hashed])
        for future in (self._written, self._hashed):
            future.result()

    async def put(self, chunk: bytes) -> None:
        """Write ``chunk`` next (after the previous one).

        Raises:
            TransferError: a limit is crossed, data came after ``end``, or the previous
                write failed.
        """
        if self._ended:
            raise TransferError("malformed", "data after the end of the upload")
        self.ledger.add(len(chunk))
        await self._previous()
        loop = asyncio.get_running_loop()
        self._written = loop.run_in_executor(self._writing, self._write, chunk)
        self._hashed = loop.run_in_executor(self._hashing, self._hasher.update, chunk)

    async def end(self, size: object, sha256: object) -> dict[str, Any]:
        """The worker's ``end``: the client's claims and what was written, once it is."""
        self._ended = True
        await self._previous()
        loop = asyncio.get_running_loop()
        self._written = loop.run_in_executor(self._writing, self._flush)
        await self._written
        return {
            "type": "end",
            "size": size,
            "sha256": sha256,
            "received": self.ledger.received,
            "computed": self._hasher.hexdigest(),
        }

    async def drain(self) -> None:
        """Write what was received so far (for a resume); errors are the caller's no more."""
        await asyncio.wait([self._written, self._hashed])
        if not self._written.cancelled() and self._written.exception() is None:
            loop = asyncio.get_running_loop()
            self._written = loop.run_in_executor(self._writing, self._flush)
            await asyncio.wait([self._written])

    def close(self) -> None:
        """Close the descriptor after the write in flight and let the threads end."""
        if self._closed:
            return
        self._closed = True
        for future in (self._written, self._hashed):
            future.add_done_callback(_consume)
        self._writing.submit(self._release)
        self._writing.shutdown(wait=False)
        self._hashing.shutdown(wait=False)

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.close()
        os.close(self._fd)


def _consume(future: asyncio.Future[Any]) -> None:
    """Mark a future's outcome as seen (a failed write already reached the worker)."""
    if not future.cancelled():
        future.exception()
