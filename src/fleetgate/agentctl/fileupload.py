"""Uploading one regular file over a ``files`` channel (asyncio, a reader thread).

The file is read ahead and hashed in threads (``DiskReader``) while the event loop sends
the chunks from the offset the agent reports in ``ready``; then ``end`` with the size and
SHA-256, answered by ``done`` once the file is durable and in place on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import janus
from websockets.exceptions import ConnectionClosed

from fleetgate.agentctl.context import Context
from fleetgate.agentctl.errors import CliError
from fleetgate.agentctl.filetransfer import (
    CHUNK_BYTES,
    RETRIES,
    Closing,
    Options,
    Report,
    closed_error,
    hash_prefix,
    open_channel,
    recv_control,
    with_retries,
)
from fleetgate.agentctl.transfers import transfer_id
from fleetgate.shared.files.direct import CacheAwareReader
from fleetgate.shared.heap import keep_large_buffers


__all__ = ["DiskReader", "upload_file"]


async def upload_file(
    ctx: Context,
    opts: Options,
    local: Path,
    remote: str,
    *,
    name: str,
    report: Report,
    expect_sha256: str | None = None,
    tid: str | None = None,
    retries: int = RETRIES,
) -> dict[str, Any]:
    """Upload one regular file; return the agent's ``done`` plus ``resumed_from``."""
    keep_large_buffers()  # chunks and their masked copies from the heap, not one mmap each
    st = os.stat(local)
    size = st.st_size
    real = os.path.realpath(local)  # noqa: ASYNC240 (a local lookup, microseconds)
    tid = tid or transfer_id(
        "upload", opts.server, opts.user, remote, name, real, size, st.st_mtime_ns
    )
    first_offset: list[int] = []

    async def attempt() -> dict[str, Any]:
        ws = await open_channel(
            ctx, opts, op="upload", path=remote, name=name, transfer_id=tid, size=size,
            overwrite=opts.overwrite, expect_sha256=expect_sha256,
        )  # fmt: skip
        async with contextlib.aclosing(Closing(ws)):
            ready = await recv_control(ws)
            offset = int(ready["offset"])
            first_offset.append(offset)
            fd = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
            hasher = hashlib.sha256()
            disk = DiskReader(fd, offset, hasher)
            try:
                report(offset)
                position = offset
                while chunk := await disk.get():
                    position += len(chunk)
                    try:
                        await ws.send(chunk)  # masked into a frame of its own: chunk is free
                    except ConnectionClosed as exc:
                        raise closed_error(exc) from None
                    finally:
                        disk.done(chunk)
                    report(position)
            finally:
                await disk.aclose()
                os.close(fd)
            digest = hasher.hexdigest()
            try:
                await ws.send(json.dumps({"type": "end", "size": position, "sha256": digest}))
            except ConnectionClosed as exc:
                raise closed_error(exc) from None
            done = await recv_control(ws)
            if done.get("sha256") != digest:
                raise CliError(f"SHA-256 mismatch: sent {digest}, the agent stored {done}")
            return done

    done: dict[str, Any] = await with_retries(ctx, attempt, retries)
    done["resumed_from"] = first_offset[-1] if first_offset else 0
    return done


class DiskReader:
    """Reads the file ahead in a thread (a few chunks at most) and hashes each chunk in a
    second one while the next is read, so the event loop only sends; the prefix a resumed
    upload skips is hashed first. What is not in the page cache is read around it
    (``CacheAwareReader``).

    The chunks are views of the reader's buffers: ``free`` holds the buffers the loop is
    done with (:meth:`done`), so the thread never reads into one still queued or being
    sent. The hand-overs are janus queues: the loop's ``get`` is an ordinary await (Ctrl-C
    cancels it at once, no thread is left blocked in ``get``), and closing the queues wakes
    the thread if it is blocked on one.
    """

    AHEAD = 4
    """Chunks read ahead at most (plus the one being sent)."""

    def __init__(self, fd: int, offset: int, hasher: Any) -> None:
        self.fd, self.offset, self.hasher = fd, offset, hasher
        self.q: janus.Queue[memoryview | OSError | CliError] = janus.Queue(maxsize=self.AHEAD)
        self.free: janus.Queue[None] = janus.Queue(maxsize=self.AHEAD + 1)
        for _ in range(self.AHEAD + 1):
            self.free.sync_q.put(None)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        out = self.q.sync_q
        reader: CacheAwareReader | None = None
        hashing = ThreadPoolExecutor(1, thread_name_prefix="agentctl-hash")
        hashed: Future[None] | None = None
        try:
            try:
                hash_prefix(self.fd, self.offset, self.hasher)
                # AHEAD queued, one being sent, one being read (the one before it may still
                # be hashing: it is done before the next read, which needs no such buffer).
                reader = CacheAwareReader(self.fd, CHUNK_BYTES, buffers=self.AHEAD + 2)
                position = self.offset
                while True:
                    self.free.sync_q.get()
                    chunk = reader.read(position)
                    if hashed is not None:
                        hashed.result()  # in order, and at most one chunk behind the reads
                        hashed = None
                    if not chunk:
                        break
                    # Hashed in the other thread while the next chunk is read (both release
                    # the GIL): one after the other, they made this the upload's slowest stage.
                    # A view of its own: the loop releases ``chunk`` once it is sent.
                    hashed = hashing.submit(self.hasher.update, chunk[:])
                    position += len(chunk)
                    out.put(chunk)
                out.put(memoryview(b""))
            except (OSError, CliError) as exc:
                out.put(exc)
        except janus.SyncQueueShutDown:
            pass  # closed: the transfer ended or was abandoned
        finally:
            hashing.shutdown(wait=True)  # no hash reads a buffer once it is freed
            if reader is not None:
                reader.close()

    async def get(self) -> memoryview:
        """The next chunk (empty at the end of the file); :meth:`done` when sent."""
        item = await self.q.async_q.get()
        if isinstance(item, OSError):
            raise CliError(f"cannot read the file: {item}")
        if isinstance(item, CliError):
            raise item
        return item

    def done(self, chunk: memoryview) -> None:
        """``chunk`` was sent: its buffer may be read into again."""
        chunk.release()
        self.free.async_q.put_nowait(None)

    async def aclose(self) -> None:
        """Stop reading ahead and wait for the thread."""
        self.q.close()
        self.free.close()
        await self.q.wait_closed()
        await self.free.wait_closed()
        await asyncio.to_thread(self.thread.join)
