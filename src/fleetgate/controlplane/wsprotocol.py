"""uvicorn's websocket protocol, with large frames received in place and sent with one
copy less.

Every channel relayed by the control plane (file transfers, terminals, tunnels) is parsed
here on its way in and serialized here on its way out. The protocol is uvicorn's sans-I/O
websockets one (what ``ws="auto"`` picks with websockets installed); only its stream
reader changes, for reads of 64 KiB and more (:mod:`fleetgate.shared.files.bulkreads`: a
1 GiB file transfer's frames cost half the parsing CPU), and how its large binary frames
are written (:mod:`fleetgate.shared.files.bulkwrites`): header and payload go to the
transport's ``writelines`` as they are (uvloop sends the list without joining it) instead
of being copied into one ``bytes`` first.

Once the handshake's bytes are in, the transport reads through :class:`_ReceiveInPlace`, a
``BufferedProtocol`` in front of uvicorn's: the payload of a large frame is received
(``recv_into``) straight into the reader's kept buffer, which the parser unmasks into the
frame's data. Through uvloop's own read buffer, each piece was copied into a new
``bytes``, then joined into the payload, before that unmasking: two passes over every
relayed byte fewer (measured on a 1 GiB download relayed from the agent: the control plane
spent 0.72-0.85 s of CPU).

A route reaches its websocket's protocol through the scope extension :data:`FRAMES`, for
what ASGI cannot say: :func:`send_with` writes a text frame and the data another websocket
received already (:meth:`BulkReadsWebSocketProtocol.queued_bytes`) in one write (a
pipelined tunnel stream's ``channel.open`` and the client's first bytes: the agent wakes
once for both, and they leave without waiting for the relay's tasks to run), and
:func:`send_now` writes one frame at once (a relay's: none of the ASGI send's coroutines
and checks per frame) when the transport takes it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from fleetgate.shared.files.bulkreads import BulkReadsMixin, use_bulk_reads
from fleetgate.shared.files.bulkwrites import BulkWritesMixin, use_bulk_writes


__all__ = ["FRAMES", "BulkReadsWebSocketProtocol", "queued_bytes", "send_now", "send_with"]

FRAMES = "fleetgate.frames"
"""The ASGI scope extension that holds a websocket's protocol itself (no dict around it:
every agent's backhaul has one)."""


class _BulkStreamReader(BulkReadsMixin, StreamReader):
    """websockets' stream reader with bulk reads into a kept buffer (a server's parser
    unmasks every payload into a new object)."""

    reuse_payload = True


SCRATCH = 64 * 1024
"""Bytes read at a time outside large payloads (headers, small frames)."""

_local = threading.local()


def _scratch() -> memoryview:
    """This thread's scratch buffer, shared by all its connections: what a read put there
    is copied by the parser before the callback returns, so the next read, of whichever
    connection, may reuse it. One per connection would cost an idle agent's backhaul
    64 KiB (320 MB for 5,000 agents)."""
    scratch: memoryview | None = getattr(_local, "scratch", None)
    if scratch is None:
        scratch = _local.scratch = memoryview(bytearray(SCRATCH))
    return scratch


class _BulkServerProtocol(BulkWritesMixin, ServerProtocol):
    """websockets' server protocol with bulk writes (a server's frames are not masked)."""

    masking = False


class BulkReadsWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets (sans-I/O) protocol whose frames are read and written in bulk."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Nothing was received yet: the handshake's parser uses the same reader object.
        use_bulk_reads(self.conn.reader, _BulkStreamReader)
        use_bulk_writes(self.conn, _BulkServerProtocol, self._write_pieces)
        self._in_place: _ReceiveInPlace | None = None

    def data_received(self, data: bytes) -> None:
        """uvicorn's, then (after the handshake's bytes) reads go through
        :class:`_ReceiveInPlace`."""
        super().data_received(data)
        if self._in_place is None and not self.transport.is_closing():
            self._in_place = _ReceiveInPlace(self)
            self.transport.set_protocol(self._in_place)

    def handle_connect(self, event: Request) -> None:
        """uvicorn's; an accepted handshake's scope also carries :data:`FRAMES`."""
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # none: the handshake was refused
        extensions = None if scope is None else scope.get("extensions")
        if extensions is not None:
            extensions[FRAMES] = self

    def queued_bytes(self) -> bytes | None:
        """Take the peer's next message if it is data received already; ``None`` (nothing
        taken) when the next one is anything else or has not arrived."""
        queued: deque[dict[str, Any]] = self.queue._queue  # type: ignore[attr-defined]
        if not queued or queued[0].get("type") != "websocket.receive":
            return None
        data = queued[0].get("bytes")
        if data is None:
            return None
        self.queue.get_nowait()
        if self.read_paused and self.queue.empty():  # as uvicorn's receive() does
            self.read_paused = False
            self.transport.resume_reading()
        return bytes(data)

    def can_send_now(self) -> bool:
        """Whether a frame written now goes out as the ASGI send's would: the websocket
        is open, not closing, and its transport not full (else that send waits)."""
        return (
            self.handshake_complete
            and self.initial_response is None
            and not self.close_sent
            and not self.disconnected
            and self.writable.is_set()
            and not self.transport.is_closing()
        )

    def send_now(self, frame: bytes | str) -> bool:
        """Send one frame (data or text) now; False, with nothing sent, when the
        websocket cannot send at once (:meth:`can_send_now`)."""
        if not self.can_send_now():
            return False
        if isinstance(frame, str):
            self.conn.send_text(frame.encode())
        else:
            self.conn.send_binary(frame)  # a large one is written at once
        output = self.conn.data_to_send()
        if output:
            self.transport.write(b"".join(output))
        return True

    def send_with(self, text: str, more: Callable[[], bytes | None]) -> bool:
        """Send ``text`` and then ``more()`` (data, if any) in one write, now; False, with
        nothing sent and ``more`` not called, when this websocket cannot send at once
        (:meth:`can_send_now`)."""
        if not self.can_send_now():
            return False
        self.conn.send_text(text.encode())
        data = more()
        if data is not None:
            self.conn.send_binary(data)  # a large one is written at once, after the text
        output = self.conn.data_to_send()
        if output:
            self.transport.write(b"".join(output))
        return True

    def _write_pieces(self, pieces: list[Any]) -> None:
        """Hand a large frame's pieces to the transport (uvicorn's flow control applies:
        a full transport pauses writing as for any other write)."""
        self.transport.writelines(pieces)


class _ReceiveInPlace(asyncio.BufferedProtocol):
    """The transport's protocol in front of uvicorn's: a large payload being read is
    received into the reader's buffer, everything else into a scratch buffer and fed to
    uvicorn's protocol as before; the other callbacks go to it unchanged."""

    def __init__(self, protocol: BulkReadsWebSocketProtocol) -> None:
        self.protocol = protocol
        self.reader: _BulkStreamReader = protocol.conn.reader  # type: ignore[assignment]
        self.scratch = _scratch()
        self.in_place = False

    def get_buffer(self, sizehint: int) -> memoryview:
        """The rest of a pending large payload, else the scratch buffer."""
        room = self.reader.bulk_room()
        self.in_place = room is not None
        return self.scratch if room is None else room

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` arrived: the parser runs on them."""
        if self.in_place:
            self.reader.bulk_filled(nbytes)
            self.protocol.data_received(b"")
        else:
            self.protocol.data_received(self.scratch[:nbytes])  # type: ignore[arg-type]

    def eof_received(self) -> None:
        """uvicorn's protocol takes note (the transport then closes)."""
        self.protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        """uvicorn's protocol cleans up."""
        self.protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        """uvicorn's flow control."""
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        """uvicorn's flow control."""
        self.protocol.resume_writing()


def _protocol(websocket: WebSocket) -> BulkReadsWebSocketProtocol | None:
    extensions = websocket.scope.get("extensions") or {}
    protocol = extensions.get(FRAMES)
    return protocol if isinstance(protocol, BulkReadsWebSocketProtocol) else None


def queued_bytes(websocket: WebSocket) -> bytes | None:
    """The next message of ``websocket`` if it is data received already (taken), else
    ``None`` (see :meth:`BulkReadsWebSocketProtocol.queued_bytes`)."""
    protocol = _protocol(websocket)
    return None if protocol is None else protocol.queued_bytes()


def send_with(websocket: WebSocket, text: str, more: Callable[[], bytes | None]) -> bool:
    """:meth:`BulkReadsWebSocketProtocol.send_with` on ``websocket``; False as well when
    another server serves it (the caller then sends the usual way)."""
    protocol = _protocol(websocket)
    return protocol is not None and protocol.send_with(text, more)


def send_now(websocket: WebSocket, frame: bytes | str) -> bool:
    """:meth:`BulkReadsWebSocketProtocol.send_now` on ``websocket``; False as well when
    another server serves it (the caller then sends the usual way)."""
    protocol = _protocol(websocket)
    return protocol is not None and protocol.send_now(frame)
