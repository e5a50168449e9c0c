"""Live tunnel streams on this control plane, and ending them when their tunnel ends.

A tunnel ends when its owner deletes it or when its work session ends (this object is a
:class:`~fleetgate.controlplane.hub.worksessions.WorkSessionClock` listener). Ending it marks the
tunnel closed (in memory at once, then in SQLite) and signals each of its streams: the
stream's route stops its relay, closes the client's websocket with 4403 and the reason
(``{"code", "detail"}``) and asks the agent to close the channel (``channel.close``). The
agent also ends every stream at its grant's expiry on its own.

The rows of tunnels in use are kept in memory, so a new stream costs no database round
trip; every change of a row goes through this object, which keeps the copy current.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field, replace

import structlog

from fleetgate.controlplane.store import Database, tunnels as tunnels_store
from fleetgate.controlplane.store.tunnels import TunnelRow
from fleetgate.controlplane.store.worksessions import WorkSessionRow
from fleetgate.controlplane.timeutil import now_us
from fleetgate.controlplane.worksession.lifecycle import Status


__all__ = ["StreamHandle", "TunnelStreams", "ended_code"]

log = structlog.get_logger("controlplane.tunnels")

MAX_CACHED_ROWS = 10_000


def ended_code(session: WorkSessionRow) -> tuple[str, str]:
    """The gate code and detail that a stream of an ended session gets."""
    if session.status is Status.EXPIRED:
        return "work_session_expired", f"work session {session.id} has expired"
    return "work_session_not_usable", f"work session {session.id} is {session.status.value}"


@dataclass
class StreamHandle:
    """One stream's registration: ``ended`` is set when its tunnel ends (``why`` says how)."""

    server_id: str
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    why: tuple[str, str] = ("TUNNEL_CLOSED", "the tunnel was closed")


@dataclass
class TunnelStreams:
    """The open streams of every tunnel, by tunnel id then channel id."""

    db: Database
    _streams: dict[str, dict[uuid.UUID, StreamHandle]] = field(default_factory=dict)
    _rows: dict[str, TunnelRow] = field(default_factory=dict)

    async def row(self, tunnel_id: str) -> TunnelRow | None:
        """The tunnel's row (from memory when it was seen before)."""
        cached = self._rows.get(tunnel_id)
        if cached is not None:
            return cached
        row = await self.db.read(tunnels_store.get_tunnel, tunnel_id)
        if row is not None:
            self._remember(row)
        return row

    def _remember(self, row: TunnelRow) -> None:
        if len(self._rows) >= MAX_CACHED_ROWS:
            self._rows.clear()
        self._rows[row.id] = row

    def add(self, row: TunnelRow, channel_id: uuid.UUID) -> StreamHandle | None:
        """Register a stream of an open tunnel; ``None`` if the tunnel has ended.

        Synchronous on purpose: between this check and the registration nothing can end
        the tunnel, so a stream is either refused here or signalled by :meth:`close`.
        """
        current = self._rows.get(row.id, row)
        if current.closed_at is not None:
            return None
        handle = StreamHandle(row.server_id)
        self._streams.setdefault(row.id, {})[channel_id] = handle
        return handle

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
        """End the tunnel: no new stream from now on, every open one is signalled."""
        now = now_us()
        self._remember(replace(tunnel, closed_at=now, close_code=code, close_reason=detail))
        streams = self._streams.get(tunnel.id, {})
        log.info("tunnel_closed", tunnel_id=tunnel.id, code=code, streams=len(streams))
        for handle in streams.values():
            handle.why = (code, detail)
            handle.ended.set()
        await self.db.write(
            tunnels_store.close_tunnel, tunnel.id, code=code, reason=detail, now=now
        )

    async def session_ended(self, session: WorkSessionRow) -> None:
        """Work-session listener: end the tunnels opened under ``session``."""
        tunnels = await self.db.read(tunnels_store.open_tunnels_of_session, session.id)
        code, detail = ended_code(session)
        for tunnel in tunnels:
            await self.close(tunnel, code, detail)
