"""Live tunnel streams on this control plane, and closing them when their tunnel ends.

A tunnel ends when its owner deletes it or when its work session ends (this object is a
:class:`~controlplane.hub.worksessions.WorkSessionClock` listener). Ending it marks the
row closed, closes every client websocket of its streams with 4403 and the reason
(``{"code", "detail"}``), and asks the agent to close their channels (``channel.close``);
the agent also ends them on its own at the grant's expiry.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

import structlog
from starlette.websockets import WebSocket

from agent.protocol.channels import CLOSE_REFUSED
from controlplane.hub.channels import ChannelBroker
from controlplane.hub.relay import close_websocket
from controlplane.store import Database, tunnels as tunnels_store
from controlplane.store.tunnels import TunnelRow
from controlplane.store.worksessions import WorkSessionRow
from controlplane.timeutil import now_us
from controlplane.worksession.lifecycle import Status


__all__ = ["TunnelStreams", "close_reason", "ended_code"]

log = structlog.get_logger("controlplane.tunnels")


def close_reason(code: str, detail: str) -> str:
    """``{"code", "detail"}`` as compact JSON within a close frame's 123 bytes."""
    reason = json.dumps({"code": code, "detail": detail}, separators=(",", ":"))
    while len(reason.encode()) > 123 and detail:
        detail = detail[: len(detail) // 2]
        reason = json.dumps({"code": code, "detail": detail + "..."}, separators=(",", ":"))
    return reason


def ended_code(session: WorkSessionRow) -> tuple[str, str]:
    """The gate code and detail that a stream of an ended session gets."""
    if session.status is Status.EXPIRED:
        return "work_session_expired", f"work session {session.id} has expired"
    return "work_session_not_usable", f"work session {session.id} is {session.status.value}"


@dataclass
class _Stream:
    server_id: str
    websocket: WebSocket


@dataclass
class TunnelStreams:
    """The open streams of every tunnel, by tunnel id then channel id."""

    db: Database
    broker: ChannelBroker
    _streams: dict[str, dict[uuid.UUID, _Stream]] = field(default_factory=dict)

    def add(self, tunnel_id: str, channel_id: uuid.UUID, server_id: str, ws: WebSocket) -> None:
        """Track a stream from before its channel is opened."""
        self._streams.setdefault(tunnel_id, {})[channel_id] = _Stream(server_id, ws)

    def remove(self, tunnel_id: str, channel_id: uuid.UUID) -> None:
        """Forget a stream that ended."""
        streams = self._streams.get(tunnel_id)
        if streams is not None:
            streams.pop(channel_id, None)
            if not streams:
                del self._streams[tunnel_id]

    def count(self, tunnel_id: str) -> int:
        """Streams open now through ``tunnel_id``."""
        return len(self._streams.get(tunnel_id, ()))

    async def close(self, tunnel: TunnelRow, code: str, detail: str) -> None:
        """Close the tunnel's row (if open) and every stream of it.

        The row is closed first: a stream that registers after this point finds it
        closed when it re-reads the row, so no stream slips through.
        """
        await self.db.write(
            tunnels_store.close_tunnel, tunnel.id, code=code, reason=detail, now=now_us()
        )
        streams = self._streams.get(tunnel.id, {})
        log.info("tunnel_closed", tunnel_id=tunnel.id, code=code, streams=len(streams))
        reason = close_reason(code, detail)
        for channel_id, stream in list(streams.items()):
            await close_websocket(stream.websocket, CLOSE_REFUSED, reason)
            await self.broker.close(stream.server_id, channel_id, detail)

    async def session_ended(self, session: WorkSessionRow) -> None:
        """Work-session listener: end the tunnels opened under ``session``."""
        tunnels = await self.db.read(tunnels_store.open_tunnels_of_session, session.id)
        code, detail = ended_code(session)
        for tunnel in tunnels:
            await self.close(tunnel, code, detail)
