"""Revocation reaches what is open: channels, tunnels and terminals.

When a token is deleted, a user disabled or a work session ends, :meth:`Revoker.revoke`
ends everything that principal or session opened, with a code the client sees (close
4403, reason ``{"code", "detail"}``; codes in
:data:`fleetgate.shared.protocol.channels.REVOCATION_CODES`):

- every relayed channel it owns (terminal attachments, file transfers, tunnel streams,
  any later kind), through the one channel registry;
- its tunnels (closed, so no new stream opens);
- its terminals, attached or detached: the agent gets ``terminal.end`` and kills the
  shell now instead of at the end of the detach grace.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from fleetgate.controlplane.hub.channelregistry import Revocation
from fleetgate.controlplane.hub.channels import ChannelBroker
from fleetgate.controlplane.hub.tunnels import TunnelStreams
from fleetgate.controlplane.store import Database, terminals as terminals_store
from fleetgate.controlplane.store.worksessions import WorkSessionRow
from fleetgate.controlplane.timeutil import now_us
from fleetgate.controlplane.worksession.lifecycle import Status


__all__ = ["Revoked", "Revoker", "session_revocation"]

log = structlog.get_logger("controlplane.revocation")

_SESSION_CODES = {
    Status.REVOKED: "work_session_revoked",
    Status.COMPLETED: "work_session_completed",
    Status.EXPIRED: "work_session_expired",
}


def session_revocation(session: WorkSessionRow) -> Revocation:
    """The revocation of an ended work session (its code says how it ended)."""
    code = _SESSION_CODES.get(session.status, "work_session_not_usable")
    return Revocation(
        code,
        f"work session {session.id} is {session.status.value}",
        work_session_id=session.id,
    )


@dataclass(frozen=True)
class Revoked:
    """What one revocation ended."""

    channels: int
    tunnels: int
    terminals: int


class Revoker:
    """Ends what a revoked token, user or work session opened; one per application."""

    def __init__(self, db: Database, channels: ChannelBroker, tunnels: TunnelStreams) -> None:
        self._db = db
        self._channels = channels
        self._tunnels = tunnels
        self.broadcast: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        """Set on a replica: tells the others, whose clients' channels it covers too."""

    async def apply_remote(self, fields: dict[str, Any]) -> None:
        """A revocation made on another replica: end the channels and tunnels relayed here
        (its terminals were ended and recorded there)."""
        revocation = Revocation(**fields)
        channels = self._channels.open.revoke(revocation)
        tunnels = await self._tunnels.revoke(revocation)
        log.info(
            "revocation.applied_from_replica",
            code=revocation.code,
            channels=len(channels),
            tunnels=tunnels,
        )

    async def revoke(self, revocation: Revocation) -> Revoked:
        """End every channel, tunnel and terminal ``revocation`` covers."""
        channels = self._channels.open.revoke(revocation)
        tunnels = await self._tunnels.revoke(revocation)
        if self.broadcast is not None:
            await self.broadcast(dataclasses.asdict(revocation))
        terminals = await self._db.read(
            terminals_store.open_terminals_of,
            token_id=revocation.token_id,
            user_id=revocation.user_id,
            work_session_id=revocation.work_session_id,
        )
        for row in terminals:
            # By terminal id: a detached shell has no channel to close.
            if row.status == "open":
                await self._channels.end_terminal(row.server_id, row.id, revocation.code)
            await self._db.write(
                terminals_store.mark_closed, row.id, reason=revocation.code, now=now_us()
            )
        outcome = Revoked(len(channels), tunnels, len(terminals))
        log.info(
            "revocation.done",
            code=revocation.code,
            token_id=revocation.token_id,
            user_id=revocation.user_id,
            work_session=revocation.work_session_id,
            channels=outcome.channels,
            tunnels=outcome.tunnels,
            terminals=outcome.terminals,
        )
        return outcome

    async def session_ended(self, session: WorkSessionRow) -> None:
        """A ``WorkSessionClock`` listener: revoke what the ended session opened."""
        await self.revoke(session_revocation(session))
