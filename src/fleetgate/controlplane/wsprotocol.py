"""uvicorn's websocket protocol, with large frames read with one copy less.

Every channel relayed by the control plane (file transfers, terminals, tunnels) is parsed
here on its way in. The protocol is uvicorn's sans-I/O websockets one (what ``ws="auto"``
picks with websockets installed); only its stream reader changes, for reads of 64 KiB and
more (:mod:`fleetgate.shared.files.bulkreads`): a 1 GiB file transfer's frames cost half
the parsing CPU.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.streams import StreamReader

from fleetgate.shared.files.bulkreads import BulkReadsMixin, use_bulk_reads


__all__ = ["BulkReadsWebSocketProtocol"]


class _BulkStreamReader(BulkReadsMixin, StreamReader):
    """websockets' stream reader with bulk reads."""


class BulkReadsWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets (sans-I/O) protocol whose frames are read in bulk."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Nothing was received yet: the handshake's parser uses the same reader object.
        use_bulk_reads(self.conn.reader, _BulkStreamReader)
