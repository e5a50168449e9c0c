"""asyncssh's connection carried straight over the channel's websocket: no socketpair.

asyncssh writes one SSH packet per ``transport.write`` (about 32 KiB in bulk transfers);
through a socketpair every packet was a system call, a wake-up and a read by the pump.
:class:`LinkTransport` buffers what asyncssh writes and sends it as one binary frame per
turn of the event loop (at most :data:`MAX_FRAME` bytes), and hands received frames to
asyncssh directly. Framing is a tunnel stream's (``fleetgate.shared.protocol.tunnel``):
binary = bytes, ``{"type": "eof"}``, ``{"type": "error"}``.

Flow control: above :data:`HIGH_WATER` bytes waiting to be sent, asyncssh is paused
(``pause_writing``), which stops its channels, hence the programs writing; frames are
received one at a time and each is processed before the next is read, and asyncssh's SSH
windows bound what each channel may have in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fleetgate.agent.errors import ChannelClosed
from fleetgate.shared.protocol.tunnel import tunnel_error_frame
from fleetgate.shared.pump import Link


__all__ = ["HIGH_WATER", "MAX_FRAME", "LinkTransport", "LinkTunnel"]

MAX_FRAME = 1024 * 1024
HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1024 * 1024
_EOF = json.dumps({"type": "eof"})


class LinkTransport(asyncio.Transport):
    """The asyncio transport asyncssh writes to; :meth:`run` moves the bytes."""

    def __init__(self, link: Link) -> None:
        super().__init__()
        self._link = link
        self._protocol: asyncio.Protocol | None = None
        self._buffer = bytearray()
        self._ready = asyncio.Event()
        self._closing = False
        self._paused = False
        self._lost = False
        self._attached = asyncio.Event()
        """Set once asyncssh's protocol is in place (or the transport closed): the
        client's first bytes (its version line) must not arrive before it."""

    # -- the transport asyncssh sees -------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol
        self._attached.set()

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in ("peername", "sockname"):
            return ("fleetgate-channel", 0)
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._buffer += data
        self._ready.set()
        if not self._paused and len(self._buffer) > HIGH_WATER and self._protocol is not None:
            self._paused = True
            self._protocol.pause_writing()

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        # What asyncssh wrote last (a disconnect message) is still sent.
        self._closing = True
        self._ready.set()
        self._attached.set()

    def abort(self) -> None:
        # asyncssh aborts right after writing its disconnect message: keep the buffer,
        # it is small, and the client should read why.
        self.close()

    # -- moving the bytes ------------------------------------------------------------

    async def run(self) -> None:
        """Carry the connection until both sides are done (or the channel closed)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._send())
            tg.create_task(self._receive())

    async def _send(self) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._buffer:
                    frame = bytes(self._buffer[:MAX_FRAME])
                    del self._buffer[:MAX_FRAME]
                    await self._link.send(frame)
                    if self._paused and len(self._buffer) <= LOW_WATER:
                        self._paused = False
                        if self._protocol is not None and not self._closing:
                            self._protocol.resume_writing()
                if self._closing:
                    await self._link.send(_EOF)
                    return
        except ChannelClosed:
            self._connection_lost(ConnectionResetError("the channel closed"))

    async def _receive(self) -> None:
        await self._attached.wait()
        while True:
            try:
                frame = await self._link.recv()
            except ChannelClosed:
                self._connection_lost(None)
                return
            if isinstance(frame, bytes):
                if self._protocol is not None and not self._lost:
                    self._protocol.data_received(frame)
                continue
            try:
                kind = json.loads(frame).get("type")
            except (ValueError, AttributeError):
                kind = None
            if kind in ("eof", "error"):
                self._connection_lost(None if kind == "eof" else ConnectionResetError(frame))
                return
            with contextlib.suppress(ChannelClosed):
                await self._link.send(tunnel_error_frame("tunnel_protocol", "unexpected frame"))
            self._connection_lost(ConnectionResetError("unexpected frame"))
            return

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self.close()
        if self._protocol is not None:
            self._protocol.connection_lost(exc)


class LinkTunnel:
    """What ``asyncssh.connect_reverse(tunnel=...)`` asks for: one connection, on the link."""

    def __init__(self, transport: LinkTransport) -> None:
        self._transport = transport

    async def create_connection(
        self, session_factory: Any, remote_host: str, remote_port: int
    ) -> tuple[LinkTransport, Any]:
        """Make the (only) connection: asyncssh's protocol on our transport."""
        protocol = session_factory()
        self._transport.set_protocol(protocol)
        protocol.connection_made(self._transport)
        return self._transport, protocol

    def close(self) -> None:
        """Nothing to release: the channel is closed by its owner."""

    def abort(self) -> None:
        """The handshake failed: end the stream (the client reads EOF)."""
        self._transport.close()

    async def wait_closed(self) -> None:
        """Nothing to wait for."""
