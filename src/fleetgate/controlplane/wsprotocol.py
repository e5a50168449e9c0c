"""uvicorn's websocket protocol, with large frames read with one copy less and sent with
one copy less.

Every channel relayed by the control plane (file transfers, terminals, tunnels) is parsed
here on its way in and serialized here on its way out. The protocol is uvicorn's sans-I/O
websockets one (what ``ws="auto"`` picks with websockets installed); only its stream
reader changes, for reads of 64 KiB and more (:mod:`fleetgate.shared.files.bulkreads`: a
1 GiB file transfer's frames cost half the parsing CPU), and how its large binary frames
are written (:mod:`fleetgate.shared.files.bulkwrites`): header and payload go to the
transport's ``writelines`` as they are (uvloop sends the list without joining it) instead
of being copied into one ``bytes`` first.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from fleetgate.shared.files.bulkreads import BulkReadsMixin, use_bulk_reads
from fleetgate.shared.files.bulkwrites import BulkWritesMixin, use_bulk_writes


__all__ = ["BulkReadsWebSocketProtocol"]


class _BulkStreamReader(BulkReadsMixin, StreamReader):
    """websockets' stream reader with bulk reads."""


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

    def _write_pieces(self, pieces: list[Any]) -> None:
        """Hand a large frame's pieces to the transport (uvicorn's flow control applies:
        a full transport pauses writing as for any other write)."""
        self.transport.writelines(pieces)
