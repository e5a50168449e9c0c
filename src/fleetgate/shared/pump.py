"""Move the bytes of one TCP connection over one channel link, both ways at once.

Used by the agent (link = its channel websocket, socket = the target connection) and by
``agentctl tunnel`` (link = the client websocket, socket = the accepted connection), so
both ends speak exactly the same frames (``fleetgate.shared.protocol.tunnel``).

Throughput comes from large reads sent as single binary frames with no acknowledgement;
backpressure from awaiting every write: ``link.send`` waits while the websocket's
transport is above its high-water mark, and ``sock_sendall`` waits while the kernel's
send buffer is full, during which the link is not read, so its TCP window closes and the
sender upstream waits in turn. Nothing is buffered here beyond one read.

With ``reuse`` (the control plane accepted the link with ``REUSE_HEADER``), a clean
stream ends with an ``end`` frame (which stands for our ``eof`` too when it is the last
one) instead of a close, and the link is left open for the next stream
(:attr:`PumpResult.reusable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

from fleetgate.shared.errors import ProtocolViolation
from fleetgate.shared.protocol.tunnel import (
    END_FRAME,
    EOF_FRAME,
    TunnelEnd,
    TunnelError,
    decode_tunnel_control,
    tunnel_error_frame,
)


__all__ = ["Link", "PumpResult", "abort_socket", "pump"]


class Link(Protocol):
    """One message-oriented link (a websocket): bytes are data, text is control."""

    async def recv(self) -> bytes | str: ...

    async def send(self, data: bytes | str) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    async def wait_closed(self) -> None: ...


@dataclass(frozen=True)
class PumpResult:
    """How the stream ended: ``clean`` after both EOFs, else with the error's code.

    ``sent`` and ``received`` count payload bytes from and to the local socket.
    ``reusable``: ended by our ``end`` frame; the link is open for the next stream.
    """

    clean: bool
    code: str | None = None
    message: str = ""
    sent: int = 0
    received: int = 0
    reusable: bool = False


class _End(Exception):
    """The stream ends early; ``notify`` says whether the peer must be told."""

    def __init__(self, code: str, message: str, *, notify: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.notify = notify


def abort_socket(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): the application on the other end sees the
    connection fail instead of a clean end it could mistake for complete data."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Stream:
    def __init__(
        self,
        sock: socket.socket,
        link: Link,
        read_bytes: int,
        closed: tuple[type[BaseException], ...],
        reuse: bool,
    ) -> None:
        self.sock = sock
        self.link = link
        self.read_bytes = read_bytes
        self.closed = closed
        self.reuse = reuse
        self.loop = asyncio.get_running_loop()
        self.up_done = False
        self.down_done = False
        self.eof_sent = False
        self.end_sent = False
        self.reusable = False
        self.tasks: asyncio.TaskGroup | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.sent = 0
        self.received = 0

    async def finish(self) -> None:
        """Both ``eof`` have passed: close the link, or with ``reuse`` send ``end`` once
        (the two directions may both get here) and leave the link to the next stream."""
        if not self.reuse:
            await self.link.close(1000)
            return
        if self.end_sent:
            return
        self.end_sent = True
        try:
            await self.link.send(END_FRAME)
        except self.closed:
            raise _End("tunnel_closed", "the channel closed", notify=False) from None
        self.reusable = True
        if self.watcher is not None:
            self.watcher.cancel()  # the link stays open: nothing more to watch

    async def upstream(self) -> None:
        """Local socket -> link, until the socket's EOF (then an ``eof`` frame)."""
        while True:
            try:
                data = await self.loop.sock_recv(self.sock, self.read_bytes)
            except OSError as exc:
                raise _End(
                    "tunnel_reset", f"connection failed: {exc.strerror or exc}", notify=True
                ) from None
            if not data:
                # Marked before the send, which may wait for the transport to drain: the
                # peer can get the eof and close before this task runs again.
                self.up_done = True
                if self.reuse and self.down_done:
                    await self.finish()  # the last eof: ``end`` says it too
                    return
            try:
                await self.link.send(data if data else EOF_FRAME)
            except self.closed:
                raise _End("tunnel_closed", "the channel closed", notify=False) from None
            if not data:
                self.eof_sent = True
                if self.down_done:
                    await self.finish()
                return
            self.sent += len(data)

    async def watch(self) -> None:
        """End the stream when the link closes early, even while both directions are
        blocked on the socket (a target that neither reads nor writes)."""
        await self.link.wait_closed()
        if not (self.up_done and self.down_done):
            raise _End("tunnel_closed", "the channel closed", notify=False)

    async def downstream(self) -> None:
        """Link -> local socket, until the link closes (after both EOFs: a clean end)."""
        while True:
            try:
                message = await self.link.recv()
            except self.closed:
                if self.up_done and self.down_done:
                    return
                raise _End("tunnel_closed", "the channel closed", notify=False) from None
            if isinstance(message, bytes):
                if self.down_done:
                    raise _End("tunnel_protocol", "data after eof", notify=True)
                try:
                    await self.sendall(message)
                except OSError as exc:
                    raise _End(
                        "tunnel_reset", f"connection failed: {exc.strerror or exc}", notify=True
                    ) from None
                self.received += len(message)
                continue
            try:
                frame = decode_tunnel_control(message)
            except ProtocolViolation as exc:
                raise _End("tunnel_protocol", exc.message, notify=True) from None
            if isinstance(frame, TunnelError):
                raise _End(frame.code, frame.message, notify=False)
            if isinstance(frame, TunnelEnd):  # the control plane never sends one
                raise _End("tunnel_protocol", "unexpected end frame", notify=True)
            if self.down_done:
                raise _End("tunnel_protocol", "eof received twice", notify=True)
            self.down_done = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                raise _End(
                    "tunnel_reset", f"connection failed: {exc.strerror or exc}", notify=True
                ) from None
            if self.eof_sent if self.reuse else self.up_done:
                await self.finish()
            if self.reuse:
                # What follows on the link is the next stream's (or nothing): not ours.
                return

    async def sendall(self, data: bytes) -> None:
        """Write ``data`` to the socket. Only while the socket is full does downstream
        stop reading the link, so that is when the link's closing starts being watched
        (:meth:`watch`): most streams (a request, its answer) never need the task."""
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(data):
            return
        if self.watcher is None and self.tasks is not None and not self.end_sent:
            with contextlib.suppress(RuntimeError):  # the group is ending: so is this
                self.watcher = self.tasks.create_task(self.watch())
        await self.loop.sock_sendall(self.sock, memoryview(data)[sent:])


async def pump(
    sock: socket.socket,
    link: Link,
    *,
    read_bytes: int,
    closed: tuple[type[BaseException], ...],
    reuse: bool = False,
) -> PumpResult:
    """Carry ``sock`` over ``link`` until the stream ends; the socket is closed on return.

    ``sock`` must be non-blocking. ``closed`` are the exceptions by which ``link`` says it
    ended. On a clean end (EOF both ways) the link is closed with 1000 and the socket
    closed; on a failure the socket is reset and the peer gets an ``error`` frame when it
    did not cause it; the caller then closes the link (after reporting, so a slow close
    handshake never delays what the user sees). With ``reuse``, a clean end is our ``end``
    frame instead (the link stays open: ``reusable``), or the link's close as without.
    """
    stream = _Stream(sock, link, read_bytes, closed, reuse)
    end: _End | None = None
    try:
        try:
            async with asyncio.TaskGroup() as tasks:
                stream.tasks = tasks
                tasks.create_task(stream.upstream())
                # Downstream in this task: one task less per stream, and the link's
                # first bytes (often there already: the client spoke first) go to the
                # socket now instead of a loop turn later.
                await stream.downstream()
        except* _End as group:
            end = group.exceptions[0]  # type: ignore[assignment]
        except* closed:
            end = _End("tunnel_closed", "the channel closed", notify=False)
    except BaseException:
        # Cancelled (the channel was closed, the session ended, shutdown): the local
        # connection fails visibly; the caller closes the link.
        abort_socket(sock)
        raise
    if end is None:
        sock.close()
        return PumpResult(
            clean=True, sent=stream.sent, received=stream.received, reusable=stream.reusable
        )
    abort_socket(sock)
    if end.notify:
        try:
            await link.send(tunnel_error_frame(end.code, end.message))
        except closed:
            pass
    return PumpResult(
        clean=False,
        code=end.code,
        message=end.message,
        sent=stream.sent,
        received=stream.received,
    )
