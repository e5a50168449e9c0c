"""A download's bytes received straight into the buffers they are written from (asyncio).

Through websockets, each byte of a download is copied from the socket into a new
``bytes`` per read, joined into a frame's payload, handed to a writer thread, copied into
the page-aligned buffer of ``O_DIRECT`` writes and hashed there by a third thread, long
after it left the processor's cache. Measured on 1 GiB (2 cores, page cache dropped):
agentctl spent 1.8 s of CPU, 0.9 s of it hashing, in a transfer of 2.7 s where the four
processes together are CPU-bound.

:class:`DownloadSink` takes the websocket's transport over (as its ``BufferedProtocol``):
the payload of each data frame is received (``recv_into``) into the next free part of a
ring of aligned buffers, hashed right away while it is in the cache, and a full buffer
is written to the file from where it lies, by one thread (``DirectWriter.write_aligned``).
Frame headers, and whole frames that are not data (the ``ready``/``done`` text frames,
pings, the closing handshake, anything malformed), go to websockets as received
(:class:`~fleetgate.shared.files.frameheads.FrameRouter` decides), so the channel still
works as before: ``ws.recv()`` returns the control frames, in their order with the data.
Memory stays at :data:`BUFFERS` buffers: when all wait for the disk, reading pauses.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import mmap
import queue
import threading
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from fleetgate.shared.files.direct import DirectWriter
from fleetgate.shared.files.frameheads import MAX_HEAD_BYTES, FrameRouter, parse_head


__all__ = ["BLOCK", "BUFFERS", "DownloadSink"]

BLOCK = 4 << 20
"""Bytes per buffer of the ring, and per write (a whole number of disk blocks)."""
BUFFERS = 4
"""Buffers in the ring: one being received into, the rest being written or waiting."""
SCRATCH = 16 * 1024
"""Bytes read at a time between data frames (headers and control frames)."""


class DownloadSink(asyncio.BufferedProtocol):
    """Receives a download's data frames into the file ``fd`` from ``offset`` on.

    Made by :meth:`attach`; its owner waits for the agent's ``done`` with ``ws.recv()`` and
    then calls :meth:`aclose` (in every case: it writes what was received, for a resume).

    Attributes:
        position: the file offset after the last byte received.
        error: the write that failed, if one did (the rest is not written).
    """

    def __init__(
        self, ws: ClientConnection, fd: int, offset: int, hasher: Any, report: Callable[[int], None]
    ) -> None:
        self.ws, self.hasher, self.report = ws, hasher, report
        self.transport: Any = ws.transport
        self.position = offset
        self.error: OSError | None = None
        self.router = FrameRouter()
        self._scratch = memoryview(bytearray(SCRATCH))
        self._head = bytearray()  # a header received in part
        self._left = 0  # payload bytes of the data frame being received
        self._forward = 0  # payload bytes of a frame being handed to websockets
        self._backlog = bytearray()  # bytes received while no buffer was free
        self._into_ring = False  # the last get_buffer gave part of a ring buffer
        self._paused = False
        self._closed = False
        self._mem = mmap.mmap(-1, BLOCK * BUFFERS)
        self._ring = [memoryview(self._mem)[i * BLOCK : (i + 1) * BLOCK] for i in range(BUFFERS)]
        self._free = collections.deque(range(1, BUFFERS))
        self._current: int | None = 0
        self._used = 0  # bytes in the current buffer
        self._jobs: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._writer = DirectWriter(fd, offset, drop=True)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._write, name="agentctl-write", daemon=True)
        self._thread.start()

    @classmethod
    def attach(
        cls, ws: ClientConnection, fd: int, offset: int, hasher: Any, report: Callable[[int], None]
    ) -> DownloadSink | None:
        """Take ``ws``'s transport over, or None where that cannot be done safely: only
        between two frames, with nothing of a frame received by websockets yet (right
        after the handshake, before the agent's ``ready``, it always is)."""
        reader = ws.protocol.reader
        try:
            queued = len(ws.recv_messages.frames)
        except (AttributeError, TypeError):
            return None  # another websockets: its internals are unknown, keep its path
        if (
            ws.protocol.state is not State.OPEN
            or reader.buffer
            or not getattr(reader, "at_frame_start", False)
            or queued
            or ws.transport.get_protocol() is not ws
        ):
            return None
        sink = cls(ws, fd, offset, hasher, report)
        ws.transport.set_protocol(sink)
        return sink

    # The transport's side (asyncio.BufferedProtocol).

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the next read goes: the rest of a data frame's payload, into the ring."""
        self._into_ring = bool(self._left) and self._current is not None and not self._closed
        if self._into_ring:
            assert self._current is not None
            return self._ring[self._current][self._used : self._used + self._left]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were read into the last buffer given."""
        if self._into_ring:
            self._landed(nbytes)
        else:
            self._ingest(self._scratch[:nbytes])

    def eof_received(self) -> None:
        """The peer ended the stream: websockets takes note (the transport then closes)."""
        self.ws.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection ended: websockets' ``recv`` reports it."""
        self.ws.connection_lost(exc)

    def pause_writing(self) -> None:
        """websockets' own flow control of what it sends."""
        self.ws.pause_writing()

    def resume_writing(self) -> None:
        """websockets' own flow control of what it sends."""
        self.ws.resume_writing()

    # Receiving.

    def _ingest(self, data: memoryview) -> None:
        """Bytes read into the scratch buffer (or held back): route them, in order."""
        while data:
            if self._forward:
                taken = min(self._forward, len(data))
                self.ws.data_received(bytes(data[:taken]))
                self._forward -= taken
            elif self._left and self._closed:
                taken = min(self._left, len(data))  # the file is no longer written
                self._left -= taken
            elif self._left:
                if self._current is None or self._backlog:  # every buffer waits for the disk
                    self._backlog += data
                    self._pause()
                    return
                room = self._ring[self._current][self._used :]
                taken = min(len(room), len(data), self._left)
                room[:taken] = data[:taken]
                self._landed(taken)
            else:
                taken = self._header(data)
            data = data[taken:]

    def _header(self, data: memoryview) -> int:
        """Read (the rest of) a frame header from ``data``; the bytes used."""
        known = len(self._head)
        raw = self._head + data[: MAX_HEAD_BYTES - known]
        head = parse_head(raw)
        if head is None:  # all of ``data`` is part of the header
            self._head = raw
            return len(data)
        self._head = bytearray()
        if not self.router.take(head):
            self.ws.data_received(bytes(raw[: head.size]))
            self._forward = head.length
        else:
            self._left = head.length
        return head.size - known

    def _landed(self, count: int) -> None:
        """``count`` bytes of the file arrived at the current buffer's free part."""
        assert self._current is not None
        self.hasher.update(self._ring[self._current][self._used : self._used + count])
        self._used += count
        self._left -= count
        self.position += count
        if self._used == BLOCK:
            self._jobs.put((self._current, self._used))
            self._current = self._free.popleft() if self._free else None
            self._used = 0
            if self._current is None:
                self._pause()
        if not self._left:
            self.report(self.position)

    def _pause(self) -> None:
        self._paused = True
        self.transport.pause_reading()

    def _freed(self, index: int) -> None:
        """A buffer was written: receive into it (first what was held back)."""
        if self._closed:
            return
        self._free.append(index)
        if self._current is None:
            self._current, self._used = self._free.popleft(), 0
        if self._backlog:
            held, self._backlog = self._backlog, bytearray()
            self._ingest(memoryview(held))
        if self._paused and self._current is not None and not self._backlog:
            self._paused = False
            self.transport.resume_reading()

    # Writing.

    def _write(self) -> None:
        """The writing thread: full buffers in order, then the last part and a flush."""
        try:
            while (job := self._jobs.get()) is not None:
                index, length = job
                if self.error is None:
                    try:
                        self._writer.write_aligned(self._ring[index][:length])
                    except OSError as exc:
                        self.error = exc
                with contextlib.suppress(RuntimeError):  # the loop is closing
                    self._loop.call_soon_threadsafe(self._freed, index)
            if self.error is None:
                self._writer.flush()
        except OSError as exc:
            self.error = exc
        finally:
            self._writer.close()

    async def aclose(self) -> None:
        """Write every byte received so far and wait for the thread; frames that still
        come are handed to websockets (the file is no longer written)."""
        if self._closed:
            return
        self._closed = True  # the rest of a frame cut short is dropped as it comes
        if self._current is not None and self._used:
            self._jobs.put((self._current, self._used))
        self._jobs.put(None)
        # What was held back comes after every byte in the ring: dropping its file bytes
        # leaves a prefix of the file for a resume; its other frames go to websockets.
        held, self._backlog = self._backlog, bytearray()
        self._ingest(memoryview(held))
        await asyncio.to_thread(self._thread.join)
        for view in self._ring:
            view.release()
        self._mem.close()
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
