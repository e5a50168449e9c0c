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
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from fleetgate.shared.files.bulkreads import BulkReadsMixin, use_bulk_reads
from fleetgate.shared.files.bulkwrites import BulkWritesMixin, use_bulk_writes


__all__ = ["BulkReadsWebSocketProtocol"]


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
