"""A handed-over download, streamed by the agent: read ahead, hashed beside, sent (asyncio).

Three things happen at once for a download: a thread reads the next chunks (with
``O_DIRECT`` where they are not in the page cache, :class:`CacheAwareReader`), a second
thread hashes the chunk being sent, and the event loop sends it. Reading and hashing in
one thread, one chunk ahead, made that thread the slowest stage of a download (1 GiB:
about 1.5 s of reads and 0.55 s of SHA-256, one after the other, for a transfer of 2.4 s).
Both release the GIL; memory stays at :data:`READ_AHEAD` + 2 chunks.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from fleetgate.agent.files.hashing import hash_prefix
from fleetgate.agent.files.walk import os_error
from fleetgate.shared.files.direct import CacheAwareReader


__all__ = ["READ_AHEAD", "send_download"]

READ_AHEAD = 2
"""Chunks read ahead of the one being sent."""


class Link(Protocol):
    """The channel, as the streaming uses it."""

    async def send(self, data: bytes | str) -> None: ...


async def send_download(
    link: Link, fd: int, handover: dict[str, Any], chunk_bytes: int
) -> dict[str, Any]:
    """Stream a handed-over download: ``ready``, the data from its offset, ``done``.

    Takes ownership of ``fd``. Returns the ``done`` object sent.

    Raises:
        TransferError: the file could not be read (the caller reports it).
        ChannelClosed: the client went away.
    """
    offset = int(handover["offset"])
    ready = {"type": "ready", "offset": offset}
    ready.update({k: handover[k] for k in ("size", "mode", "path")})
    chunks = _Chunks(fd, offset, chunk_bytes, str(handover["path"]))
    try:
        await link.send(json.dumps(ready))
        position = offset
        while view := await chunks.next():
            position += len(view)
            await link.send(view)  # type: ignore[arg-type]  # copied (masked) before it returns
        done = {"type": "done", "size": position, "sha256": await chunks.digest()}
        await link.send(json.dumps(done))
        return done
    finally:
        chunks.close()


class _Chunks:
    """The file's chunks from ``offset`` on, read ahead in one thread, hashed in another.

    Chunk ``i`` is read into buffer ``i % buffers``; it is read again only once chunk
    ``i - buffers`` was sent (the loop asked for the next one) and hashed (awaited before
    that read is started). The prefix a resumed download skips is hashed first, by the
    reading thread, before its first read.
    """

    def __init__(self, fd: int, offset: int, chunk: int, path: str) -> None:
        self._fd, self._path, self._position = fd, path, offset
        self._hasher = hashlib.sha256()
        # READ_AHEAD being read, one being sent, one still being hashed.
        self._buffers = READ_AHEAD + 2
        self._reader = CacheAwareReader(fd, chunk, buffers=self._buffers)
        self._reading = ThreadPoolExecutor(1, thread_name_prefix="files-read")
        self._hashing = ThreadPoolExecutor(1, thread_name_prefix="files-hash")
        self._loop = asyncio.get_running_loop()
        self._reads: collections.deque[asyncio.Future[memoryview]] = collections.deque()
        self._hashes: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._next = 0  # the index of the next chunk handed out
        for index in range(READ_AHEAD):
            self._reads.append(self._loop.run_in_executor(self._reading, self._read, index == 0))

    def _read(self, first: bool) -> memoryview:
        try:
            if first:
                hash_prefix(self._fd, self._position, self._hasher, bytearray(1 << 20))
            view = self._reader.read(self._position)
        except OSError as exc:
            raise os_error(exc, self._path) from None
        self._position += len(view)
        return view

    async def next(self) -> memoryview:
        """The next chunk (empty at the end of the file), being hashed while it is sent."""
        index = self._next
        view = await self._reads.popleft()
        self._next += 1
        if view:
            self._hashes.append(
                (index, self._loop.run_in_executor(self._hashing, self._hasher.update, view))
            )
        # The next read takes the buffer of chunk index + READ_AHEAD - buffers.
        reused = index + READ_AHEAD - self._buffers
        while self._hashes and self._hashes[0][0] <= reused:
            await self._hashes.popleft()[1]
        self._reads.append(self._loop.run_in_executor(self._reading, self._read, False))
        return view

    async def digest(self) -> str:
        """The SHA-256 of the whole file, once every chunk handed out is hashed."""
        while self._hashes:
            await self._hashes.popleft()[1]
        return self._hasher.hexdigest()

    def close(self) -> None:
        """Let the threads finish what they started, then free the buffers and ``fd``."""
        pending: list[asyncio.Future[Any]] = [*self._reads]
        pending += (hashed for _, hashed in self._hashes)
        for future in pending:
            future.add_done_callback(_consume)
        self._reading.submit(self._release)
        self._reading.shutdown(wait=False)

    def _release(self) -> None:
        self._hashing.shutdown(wait=True)  # no hash still reads a buffer
        self._reader.close()
        os.close(self._fd)


def _consume(future: asyncio.Future[Any]) -> None:
    """Mark a future's outcome as seen (the transfer already ended, or failed)."""
    if not future.cancelled():
        future.exception()
