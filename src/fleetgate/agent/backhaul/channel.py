"""The agent's end of a channel: one websocket per terminal, transfer or tunnel stream.

:func:`dial_channel` opens it with the agent's own credentials (the control plane checks
that the channel belongs to this server); :class:`ChannelLink` hides the websockets
library from the kinds behind three calls and one exception, :class:`ChannelClosed`.
"""

from __future__ import annotations

import functools
import socket
from typing import Any
from uuid import UUID

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import CloseCode

from fleetgate import __version__
from fleetgate.agent.backhaul.tls import agent_headers, ssl_context
from fleetgate.agent.backhaul.urls import ring_for
from fleetgate.agent.config import AgentConfig
from fleetgate.agent.errors import ChannelClosed, ConnectionLost
from fleetgate.shared.tlserrors import describe_tls_error


__all__ = ["ChannelLink", "dial_channel", "dial_path"]

_ABNORMAL = int(CloseCode.ABNORMAL_CLOSURE)


class ChannelLink:
    """A connected channel websocket: binary frames are data, text frames control."""

    def __init__(self, ws: ClientConnection, channel_id: UUID) -> None:
        self._ws = ws
        self.channel_id = channel_id
        self.reuse = False
        """The control plane ends tunnel streams on it with ``end`` frames (set by the
        pool when it accepted the websocket with ``REUSE_HEADER``)."""
        self.kept = False
        """Its last stream ended with ``end`` both ways: open and quiet, to be reused."""

    def header(self, name: str) -> str | None:
        """A header of the control plane's answer to the websocket handshake."""
        response = self._ws.response
        return None if response is None else response.headers.get(name)

    async def recv(self) -> bytes | str:
        """The next frame.

        Raises:
            ChannelClosed: the channel ended; ``code`` and ``reason`` say how.
        """
        try:
            return await self._ws.recv()
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def send(self, data: bytes | str) -> None:
        """Send one frame; waits while the transport is above its high-water mark.

        Raises:
            ChannelClosed: the channel ended.
        """
        try:
            await self._ws.send(data)
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the websocket (the control plane passes code and reason to the client)."""
        await self._ws.close(code, reason[:120])

    async def wait_closed(self) -> None:
        """Return once the websocket is closed (by either side, or lost)."""
        await self._ws.wait_closed()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        self._ws.transport.abort()


def _closed(exc: ConnectionClosed) -> ChannelClosed:
    frame = exc.rcvd or exc.sent
    if frame is None:
        return ChannelClosed(_ABNORMAL, "connection lost")
    return ChannelClosed(int(frame.code), frame.reason)


async def dial_channel(config: AgentConfig, key: str, channel_id: UUID) -> ChannelLink:
    """Open the agent's websocket of channel ``channel_id``.

    Raises:
        ConnectionLost: the control plane cannot be reached or refused the websocket.
    """
    return await dial_path(config, key, f"/ws/agent/channels/{channel_id}/", channel_id)


async def dial_path(config: AgentConfig, key: str, path: str, channel_id: UUID) -> ChannelLink:
    """Open another agent websocket at ``path`` (e.g. a recording upload) the same way.

    Raises:
        ConnectionLost: the control plane cannot be reached or refused the websocket.
    """
    cp = config.control_plane
    url = cp.websocket_url(path, ring_for(cp).current)
    try:
        ws = await connect(
            url,
            additional_headers=agent_headers(config, key),
            user_agent_header=f"fleetgate-agent/{__version__}",
            ssl=ssl_context(cp),
            open_timeout=config.backhaul.open_timeout,
            # A control plane that vanished (no FIN) must not leave channels open forever.
            ping_interval=30,
            ping_timeout=30,
            close_timeout=5,
            max_size=config.limits.max_frame_bytes,
            # Frames received but not yet read (pause above 4, resume at 1): a few keep the
            # socket busy, and with file transfers' 2 MiB frames each one is 2 MiB of RSS
            # (the default 16 put the agent above 130 MB during a 1 GiB upload).
            max_queue=(4, 1),
            # Bulk data: a deeper write buffer keeps the socket busy while we read more.
            write_limit=1024 * 1024,
            compression=None,
        )
    except InvalidStatus as exc:
        raise ConnectionLost(
            f"channel {channel_id} refused with HTTP {exc.response.status_code}"
        ) from exc
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        reason = describe_tls_error(exc, cp.ca_file) or str(exc)
        raise ConnectionLost(f"cannot open channel {channel_id}: {reason}") from exc
    sock = ws.transport.get_extra_info("socket")
    if sock is not None:
        # Keystroke echoes and small tunnel writes must not wait for a delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _use_bulk_io(ws)  # an upload's frames read with one copy, a download's sent with one
    return ChannelLink(ws, channel_id)


def _use_bulk_io(ws: ClientConnection) -> None:
    """Read the channel's large frames with one copy (``shared.files.bulkreads``) and send
    them without the serializing one (``shared.files.bulkwrites``).

    Imported with the first channel: an idle agent does not load them (its idle memory).
    """
    from fleetgate.shared.files.bulkreads import use_bulk_reads
    from fleetgate.shared.files.bulkwrites import use_bulk_writes

    use_bulk_reads(ws.protocol.reader, _bulk_reader())
    use_bulk_writes(ws.protocol, _bulk_protocol())


@functools.cache
def _bulk_reader() -> type:
    from websockets.streams import StreamReader

    from fleetgate.shared.files.bulkreads import BulkReadsMixin

    class BulkStreamReader(BulkReadsMixin, StreamReader):
        """websockets' stream reader with large frames read in one copy."""

    return BulkStreamReader


@functools.cache
def _bulk_protocol() -> type:
    from websockets.client import ClientProtocol

    try:
        from websockets.speedups import apply_mask
    except ImportError:  # pragma: no cover - a websockets built without its C speedups
        from websockets.utils import apply_mask

    from fleetgate.shared.files.bulkwrites import BulkWritesMixin

    class BulkClientProtocol(BulkWritesMixin, ClientProtocol):
        """websockets' client protocol with large frames sent without a copy."""

        masking = True

        @staticmethod
        def mask(data: Any, key: bytes) -> bytes:
            return apply_mask(data, key)

    return BulkClientProtocol
