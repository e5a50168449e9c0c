"""The output pump: reads a command's merged output pipe and hands it on in chunks.

It reads a block at a time, and only when the previous block has been handed to
``on_output``: a slow consumer stops the reads, the pipe fills up and the command blocks
in ``write``. Apart from the kernel's pipe buffer, at most one block, one partial chunk
and the capped result are held in memory. Quiet output is flushed after
``output_flush_interval``.

After the main process exits the pump keeps reading: first everything that was already in
the pipe (the command's own last words, however slow the consumer), then until EOF but at
most :data:`DRAIN_TIMEOUT` seconds, since a grandchild that left the process group
(setsid) may hold the pipe open for ever.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import termios
from collections.abc import Awaitable, Callable

from fleetgate.agent.config.resources import LimitsConfig
from fleetgate.agent.exec.output import HeadTailCapture, OutputChunker


__all__ = ["DRAIN_TIMEOUT", "READ_BLOCK", "OnOutput", "OutputPump"]

READ_BLOCK = 64 * 1024
"""Bytes read from the pipe at a time."""

DRAIN_TIMEOUT = 2.0
"""Seconds to wait for EOF after the command exited and its pending output was read."""

OnOutput = Callable[[int, str], Awaitable[None]]
"""Receives ``(seq, text)`` for each chunk, ``seq`` from 0."""


class OutputPump:
    """Reads one command's output pipe (non-blocking, owned by the pump) until it ends."""

    def __init__(self, fd: int, limits: LimitsConfig, on_output: OnOutput) -> None:
        self.capture = HeadTailCapture(limits.result_cap_bytes)
        self._fd: int | None = fd
        self._on_output = on_output
        self._chunker = OutputChunker(limits.output_chunk_bytes)
        self._flush_interval = limits.output_flush_interval
        self._seq = 0
        self._waiter: asyncio.Future[None] | None = None
        # Set when the main process is gone: the pipe's backlog at that moment and the
        # time after which we stop waiting for EOF.
        self._backlog_until: int | None = None
        self._drain_deadline = 0.0

    def process_exited(self) -> None:
        """Note that the main process is gone and start the drain clock."""
        assert self._fd is not None
        backlog = struct.unpack("i", fcntl.ioctl(self._fd, termios.FIONREAD, b"\0" * 4))[0]
        self._backlog_until = self.capture.total_bytes + backlog
        self._drain_deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT
        self._wake()

    async def run(self) -> None:
        """Read until EOF or the end of the drain period; emit the last partial chunk."""
        loop = asyncio.get_running_loop()
        flush_at: float | None = None
        while True:
            data = self._read()
            if data == b"":
                break
            if data:
                self.capture.feed(data)
                for text in self._chunker.feed(data):
                    await self._emit(text)
            now = loop.time()
            if not self._chunker.pending:
                flush_at = None
            elif flush_at is None:
                flush_at = now + self._flush_interval
            elif now >= flush_at:
                await self._emit(self._chunker.flush())
                # An incomplete UTF-8 sequence may stay behind: try again next interval.
                flush_at = now + self._flush_interval if self._chunker.pending else None
            if self._draining_done(now):
                break
            if data is None:
                await self._wait_readable(self._next_deadline(flush_at))
            else:
                # A chatty command and an on_output that never suspends must not
                # starve the supervisor (timeouts) or the rest of the agent.
                await asyncio.sleep(0)
        await self._emit(self._chunker.flush(final=True))

    def close(self) -> None:
        """Close the read end; a writer still holding the pipe gets SIGPIPE/EPIPE."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _read(self) -> bytes | None:
        """One non-blocking read: data, ``b""`` at EOF, ``None`` if nothing is there yet."""
        assert self._fd is not None
        try:
            return os.read(self._fd, READ_BLOCK)
        except BlockingIOError:
            return None

    def _draining_done(self, now: float) -> bool:
        return (
            self._backlog_until is not None
            and self.capture.total_bytes >= self._backlog_until
            and now >= self._drain_deadline
        )

    def _next_deadline(self, flush_at: float | None) -> float | None:
        deadlines = [flush_at] if flush_at is not None else []
        if self._backlog_until is not None:
            deadlines.append(self._drain_deadline)
        return min(deadlines, default=None)

    async def _wait_readable(self, deadline: float | None) -> None:
        """Wait until the pipe is readable, ``deadline`` (loop time) passes or we are woken."""
        assert self._fd is not None
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        loop.add_reader(self._fd, _resolve, waiter)
        timer = loop.call_at(deadline, _resolve, waiter) if deadline is not None else None
        try:
            await waiter
        finally:
            loop.remove_reader(self._fd)
            if timer is not None:
                timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)

    async def _emit(self, text: str) -> None:
        if text:
            seq, self._seq = self._seq, self._seq + 1
            await self._on_output(seq, text)


def _resolve(waiter: asyncio.Future[None]) -> None:
    # Readiness callbacks can fire again before the waiting coroutine runs.
    if not waiter.done():
        waiter.set_result(None)
