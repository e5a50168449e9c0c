"""Tunnels in use on this control plane, and ending them when their tunnel ends.

A tunnel ends when its owner deletes it, or when what opened it is revoked: its work
session ends, its token is deleted, its user is disabled (:meth:`TunnelStreams.revoke`).
Ending it marks the tunnel closed (in memory at once, then in SQLite) and ends each of its
streams through the channel registry
(:class:`~fleetgate.controlplane.hub.channels.ChannelRegistry`): the stream's route stops
its relay, closes the client's websocket with 4403 and the reason (``{"code",
"detail"}``) and asks the agent to close the channel (``channel.close``). The agent also
ends every stream at its grant's expiry on its own.

The rows of tunnels in use are kept in memory, so a new stream costs no database round
trip; every change of a row goes through this object, which keeps the copy current. So is
the last grant signed for each tunnel's streams (:meth:`TunnelStreams.grant`): a stream
whose claims are the same bytes gets the same signature without signing again.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field, replace

import structlog

from fleetgate.controlplane.grants import GrantSigner
from fleetgate.controlplane.hub.channelregistry import ChannelOwner, ChannelRegistry, Revocation
from fleetgate.controlplane.store import Database, tunnels as tunnels_store
from fleetgate.controlplane.store.tunnels import TunnelRow
from fleetgate.controlplane.timeutil import now_us
from fleetgate.shared.protocol import Grant, GrantClaims, content_digest
from fleetgate.shared.protocol.channels import TunnelSpec
from fleetgate.shared.protocol.grants import encode_payload


__all__ = ["TunnelStreams", "stream_spec"]

log = structlog.get_logger("controlplane.tunnels")

MAX_CACHED_ROWS = 10_000
MAX_DEFERRED = 4096
"""Deferred stream websockets waiting for their open frame at once (all clients)."""
MAX_DEFERRED_PER_TOKEN = 16
"""The same for one token (``agentctl tunnel`` keeps two per running tunnel)."""


def stream_spec(tunnel_id: str, host: str, port: int, *, probe: bool = False) -> TunnelSpec:
    """The spec of one stream of a tunnel (what its grant binds)."""
    return TunnelSpec(
        tunnel_id=uuid.UUID(tunnel_id),
        port=port,
        host=None if host == "127.0.0.1" else host,
        probe=probe,
    )


@dataclass
class TunnelStreams:
    """The tunnels' rows, and their open streams (channels registered by tunnel id)."""

    db: Database
    channels: ChannelRegistry
    _rows: dict[str, TunnelRow] = field(default_factory=dict)
    _deferred: dict[str, int] = field(default_factory=dict)
    _grants: dict[str, tuple[bytes, Grant]] = field(default_factory=dict)
    _token_grants: dict[str, tuple[Hashable, Grant]] = field(default_factory=dict)
    _specs: dict[tuple[str, bool], tuple[TunnelSpec, str]] = field(default_factory=dict)
    max_deferred: int = MAX_DEFERRED
    max_deferred_per_token: int = MAX_DEFERRED_PER_TOKEN

    def defer(self, token_id: str) -> bool:
        """Count one more deferred stream of ``token_id`` waiting for its open frame;
        False (not counted) beyond the token's or the control plane's bound."""
        waiting = self._deferred.get(token_id, 0)
        if waiting >= self.max_deferred_per_token or self.deferred() >= self.max_deferred:
            return False
        self._deferred[token_id] = waiting + 1
        return True

    def undefer(self, token_id: str) -> None:
        """A deferred stream stopped waiting (opened, closed or expired)."""
        left = self._deferred.get(token_id, 0) - 1
        if left > 0:
            self._deferred[token_id] = left
        else:
            self._deferred.pop(token_id, None)

    def deferred(self) -> int:
        """Deferred streams waiting now, all tokens."""
        return sum(self._deferred.values())

    on_closed: Callable[[str, str, str], Awaitable[None]] | None = None
    """Set on a replica: tells the others (their cached row and streams) that
    ``(tunnel_id, code, detail)`` was closed here."""

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

    def grant(self, tunnel_id: str, claims: GrantClaims, signer: GrantSigner) -> Grant:
        """The grant of ``claims`` for a stream of ``tunnel_id``: the one signed for an
        earlier stream when its claims encode to the same bytes (an Ed25519 signature is
        a function of them), else a new one."""
        payload = encode_payload(claims)
        last = self._grants.get(tunnel_id)
        if last is not None and last[0] == payload:
            return last[1]
        grant = signer.sign_payload(payload)
        if len(self._grants) >= MAX_CACHED_ROWS:
            self._grants.clear()
        self._grants[tunnel_id] = (payload, grant)
        return grant

    def spec(self, row: TunnelRow, *, probe: bool) -> tuple[TunnelSpec, str]:
        """The spec of a stream of ``row`` and its content digest (what its grant binds):
        the same for every stream of the tunnel, so made once."""
        key = (row.id, probe)
        cached = self._specs.get(key)
        if cached is None:
            spec = stream_spec(row.id, row.remote_host, row.remote_port, probe=probe)
            cached = (spec, content_digest(spec))
            if len(self._specs) >= MAX_CACHED_ROWS:
                self._specs.clear()
            self._specs[key] = cached
        return cached

    def token_grant(
        self,
        tunnel_id: str,
        key: Hashable,
        claims: Callable[[], GrantClaims],
        signer: GrantSigner,
    ) -> Grant:
        """The tunnel's grant for a stream of a token (not gated: no work session), whose
        ``claims()`` are a function of ``key`` and the tunnel alone (its principal, the
        second it starts in): the last one while ``key`` is the same, without building
        and encoding the claims again; else :meth:`grant`'s."""
        last = self._token_grants.get(tunnel_id)
        if last is not None and last[0] == key:
            return last[1]
        grant = self.grant(tunnel_id, claims(), signer)
        if len(self._token_grants) >= MAX_CACHED_ROWS:
            self._token_grants.clear()
        self._token_grants[tunnel_id] = (key, grant)
        return grant

    def _forget_grants(self, tunnel_id: str) -> None:
        self._grants.pop(tunnel_id, None)
        self._token_grants.pop(tunnel_id, None)

    def closed(self, row: TunnelRow) -> TunnelRow | None:
        """The current row if the tunnel has ended, else ``None``.

        Synchronous on purpose: a route that finds the tunnel open registers its stream
        before its next ``await``, so a stream is either refused here or ended by
        :meth:`close`.
        """
        current = self._rows.get(row.id, row)
        return current if current.closed_at is not None else None

    def count(self, tunnel_id: str) -> int:
        """Streams open now through ``tunnel_id``."""
        return self.channels.count(tunnel_id)

    async def close(self, tunnel: TunnelRow, code: str, detail: str) -> None:
        """End the tunnel: no new stream from now on, every open one is ended."""
        now = now_us()
        self._remember(replace(tunnel, closed_at=now, close_code=code, close_reason=detail))
        self._forget_grants(tunnel.id)
        ended = self.channels.end_resource(tunnel.id, code, detail)
        log.info("tunnel.closed", tunnel_id=tunnel.id, code=code, streams=len(ended))
        await self.db.write(
            tunnels_store.close_tunnel, tunnel.id, code=code, reason=detail, now=now
        )
        if self.on_closed is not None:
            await self.on_closed(tunnel.id, code, detail)

    def closed_elsewhere(self, tunnel_id: str, code: str, detail: str) -> None:
        """Another replica closed the tunnel: forget its cached row (the next stream
        reads the closed one) and end its streams relayed here."""
        self._rows.pop(tunnel_id, None)
        self._forget_grants(tunnel_id)
        ended = self.channels.end_resource(tunnel_id, code, detail)
        log.info("tunnel.closed_elsewhere", tunnel_id=tunnel_id, code=code, streams=len(ended))

    async def revoke(self, revocation: Revocation) -> int:
        """End the tunnels opened under what ``revocation`` names; how many there were.

        The rows known here are marked closed before the first ``await`` (the caller
        ended the streams just before, and their clients learn it at once): a client's
        ``DELETE`` or new stream that comes before the database is read finds the
        tunnel closed by the revocation, not open (a DELETE would close it as its own).
        """
        now = now_us()
        for row in list(self._rows.values()):
            owner = ChannelOwner(row.owner_token, row.owner_user, row.work_session_id)
            if row.closed_at is None and revocation.matches(owner):
                closed = replace(
                    row, closed_at=now, close_code=revocation.code, close_reason=revocation.detail
                )
                self._remember(closed)
        tunnels = await self.db.read(
            tunnels_store.open_tunnels_of,
            token_id=revocation.token_id,
            user_id=revocation.user_id,
            work_session_id=revocation.work_session_id,
        )
        for tunnel in tunnels:
            await self.close(tunnel, revocation.code, revocation.detail)
        return len(tunnels)
