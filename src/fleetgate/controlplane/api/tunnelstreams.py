"""Tunnel streams: ``/ws/tunnels/<id>/streams/``, one TCP stream per channel to the agent.

Each stream is checked on its own (the tunnel, its owner, the work-session gate) and gets
a grant that carries the session's expiry (the tunnel's, signed once while its claims
stay the same, for an agent that takes one: ``hello.tunnel_grants``). The resource
itself (``/api/tunnels/``) is ``api.tunnels``'.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import sqlalchemy
from fastapi import APIRouter
from starlette.websockets import WebSocket, WebSocketState

from fleetgate.controlplane.api.channels import (
    deny,
    owner_of,
    refuse,
    serve_channel,
    services_of,
    websocket_principal,
)
from fleetgate.controlplane.api.deps import Services
from fleetgate.controlplane.auth import Principal
from fleetgate.controlplane.errors import APIError
from fleetgate.controlplane.grants import operation_claims
from fleetgate.controlplane.hub.channelpool import ChannelPool
from fleetgate.controlplane.hub.channelregistry import OpenChannel
from fleetgate.controlplane.hub.relay import close_websocket
from fleetgate.controlplane.hub.streamrelay import relay_stream
from fleetgate.controlplane.hub.tunnels import TunnelStreams
from fleetgate.controlplane.store import worksession_gate as session_gate
from fleetgate.controlplane.store.tunnels import TunnelRow
from fleetgate.controlplane.store.worksessions import WorkSessionRow
from fleetgate.controlplane.timeutil import now_us
from fleetgate.controlplane.worksession.gate import GateDenial
from fleetgate.shared.protocol import ChannelOpen, GrantClaims
from fleetgate.shared.protocol.channels import (
    CLOSE_BAD_REQUEST,
    CLOSE_NORMAL,
    REVOCATION_CODES,
)
from fleetgate.shared.protocol.tunnel import OPEN_FRAME, REUSE_HEADER


__all__ = [
    "DEFER_IDLE",
    "SCOPE",
    "STREAM_PATH",
    "load_tunnel",
    "not_found",
    "owns",
    "streams_of",
    "ws_router",
]

ws_router = APIRouter()
STREAM_PATH = "/ws/tunnels/{tunnel_id}/streams/"
SCOPE = "tunnel"
DEFER_IDLE = 300.0
"""Seconds a deferred stream's websocket waits for its open frame."""


def streams_of(app_state: Any) -> TunnelStreams:
    """The tunnels in use and their streams, from the application's state."""
    streams: TunnelStreams = app_state.tunnels
    return streams


def not_found(tunnel_id: str) -> APIError:
    """404 ``TUNNEL_NOT_FOUND``."""
    return APIError(404, "TUNNEL_NOT_FOUND", f"No tunnel with id {tunnel_id[:40]!r}.")


def owns(tunnel: TunnelRow, principal: Principal) -> bool:
    """Whether ``principal`` opened ``tunnel``."""
    if tunnel.owner_user is not None:
        return principal.user_id == tunnel.owner_user
    return principal.token.id == tunnel.owner_token


async def load_tunnel(tunnel_id: str, principal: Principal, streams: TunnelStreams) -> TunnelRow:
    """The tunnel ``tunnel_id`` if ``principal`` may see it (its owner, a superuser).

    Raises:
        APIError: 404 for any other.
    """
    try:
        key = str(uuid.UUID(tunnel_id))
    except ValueError:
        raise not_found(tunnel_id) from None
    row = await streams.row(key)
    if row is None or not (owns(row, principal) or principal.is_superuser):
        raise not_found(tunnel_id)
    return row


def _closed_error(row: TunnelRow) -> APIError:
    code = row.close_code or "TUNNEL_CLOSED"
    status = 403 if code in REVOCATION_CODES or code.startswith("work_session_") else 409
    return APIError(status, code, row.close_reason or "the tunnel is closed")


async def _stream_open(
    services: Services,
    streams: TunnelStreams,
    principal: Principal,
    row: TunnelRow,
    channel_id: uuid.UUID,
    probe: bool,
) -> ChannelOpen:
    """The ``channel.open`` of one stream: the gate again (the session may have ended
    since the tunnel was created), then its grant, bound to the session. An agent that
    takes one grant per tunnel (``hello.tunnel_grants``) gets one that names the tunnel,
    signed again only when its claims change; an older one, a grant of the stream's own."""
    now = now_us()
    user = principal.user
    principal_name = principal.token.service_name if user is None else user.username
    conn = services.hub.registry.get(row.server_id)
    per_tunnel = conn is not None and conn.tunnel_grants
    spec, digest = streams.spec(row, probe=probe)

    def check(conn: sqlalchemy.Connection | None) -> GrantClaims | GateDenial:
        session: WorkSessionRow | None = None
        if conn is not None:
            denial, session = session_gate.gate_and_record(
                conn,
                row.work_session_id,
                user_id=principal.user_id,
                server_id=row.server_id,
                server_name=row.server_name,
                scope=SCOPE,
                line=f"tunnel stream to {row.remote_host}:{row.remote_port}",
                now=now,
            )
            if denial is not None:
                return denial
        return operation_claims(
            operation_id=row.id if per_tunnel else str(channel_id),
            scope=SCOPE,
            server_id=row.server_id,
            now_us=now,
            principal_name=principal_name,
            session=session,
            content=digest,
        )

    if per_tunnel and not principal.gated:
        # A token's claims are those of the tunnel, its name and the second: while they
        # stay the same, so does the grant (nothing to build, encode or sign).
        key = (probe, principal_name, now // 1_000_000)
        grant = streams.token_grant(row.id, key, partial(_claims_of, check), services.signer)
        return ChannelOpen(channel_id=channel_id, spec=spec, grant=grant)
    # Tokens are not gated: no transaction (and no thread hop) on the stream's set-up path.
    outcome = await services.db.write(check) if principal.gated else check(None)
    if isinstance(outcome, GateDenial):
        raise APIError(403, outcome.code, outcome.detail, SCOPE)
    if per_tunnel:
        grant = streams.grant(row.id, outcome, services.signer)
    else:
        grant = services.signer.sign(outcome)
    return ChannelOpen(channel_id=channel_id, spec=spec, grant=grant)


def _claims_of(check: Callable[[None], GrantClaims | GateDenial]) -> GrantClaims:
    """The claims of a stream that is not gated (``check`` without a transaction)."""
    claims = check(None)
    assert isinstance(claims, GrantClaims)  # only the gate denies
    return claims


@ws_router.websocket(STREAM_PATH)
async def stream(websocket: WebSocket, tunnel_id: str) -> None:
    """TCP streams of a tunnel, one at a time (only its owner may open one).

    ``?probe=1`` asks the agent to check the stream (grant, policy, limits) without
    connecting to the target: ``agentctl tunnel`` does it once before it listens.
    ``?defer=1`` accepts the websocket at once and opens the stream when the client
    sends ``{"type": "open"}`` (``fleetgate.shared.protocol.tunnel``): every check below
    runs then, as for any stream; ``agentctl tunnel`` keeps such websockets ready. With
    ``&reuse=1`` as well, it is accepted with ``REUSE_HEADER``: a stream that ended with
    an ``end`` frame from the client leaves it waiting for the next ``open``, checked again.
    """
    principal: Principal | None = await websocket_principal(websocket)
    if principal is None:
        return
    services = services_of(websocket)
    streams = streams_of(websocket.app.state)
    probe = websocket.query_params.get("probe") in {"1", "true"}
    deferred = websocket.query_params.get("defer") in {"1", "true"} and not probe
    reuse = deferred and websocket.query_params.get("reuse") in {"1", "true"}
    if deferred:
        try:
            await load_tunnel(tunnel_id, principal, streams)  # an unknown tunnel: 404 at once
        except APIError as exc:
            await deny(websocket, exc.status, exc.code, exc.detail)
            return
        principal = await _next_open(websocket, streams, principal.token.id, reuse=reuse)
    while principal is not None:
        relayer = _StreamRelay(services.hub.channels.pool, client_ends=reuse)
        await _serve_stream(websocket, services, streams, tunnel_id, principal, probe, relayer)
        if not relayer.kept or websocket.application_state != WebSocketState.CONNECTED:
            return
        principal = await _next_open(websocket, streams, principal.token.id, reuse=reuse)


async def _serve_stream(
    websocket: WebSocket,
    services: Services,
    streams: TunnelStreams,
    tunnel_id: str,
    principal: Principal,
    probe: bool,
    relayer: _StreamRelay,
) -> None:
    """Check and carry one stream: the tunnel, its owner, the gate, a grant of its own."""
    channel_id = uuid.uuid4()
    try:
        row = await load_tunnel(tunnel_id, principal, streams)
        if not owns(row, principal):
            raise not_found(tunnel_id)
        if row.closed_at is not None:
            raise _closed_error(row)
        message = await _stream_open(services, streams, principal, row, channel_id, probe)
        ended = streams.closed(row)
        if ended is not None:  # ended while the gate was checked
            raise _closed_error(ended)
    except APIError as exc:
        await refuse(websocket, exc.status, exc.code, exc.detail)
        return
    # No await between the check above and the registration in serve_channel: a stream
    # is either refused there or ended by the tunnel's close.
    owner = owner_of(principal, row.work_session_id)
    channel = OpenChannel(channel_id, "tunnel", row.server_id, owner, resource_id=row.id)
    # A deferred stream's client is accepted already: its first bytes follow the open.
    await serve_channel(websocket, services, message, channel, relayer=relayer, pipelined=True)


class _StreamRelay:
    """The relay of one stream; ``kept`` when the client's websocket carries its next
    one (the agent's goes back to the pool on its own)."""

    def __init__(self, pool: ChannelPool, *, client_ends: bool) -> None:
        self._pool = pool
        self._client_ends = client_ends
        self.kept = False

    async def __call__(self, client: WebSocket, agent: WebSocket) -> None:
        agent_ends = self._pool.reusable(agent)
        kept = await relay_stream(
            client,
            agent,
            client_ends=self._client_ends,
            agent_ends=agent_ends,
            accepted=self._pool.acceptance(agent),
            # Idle again as soon as the agent said ``end``: the next stream may start
            # before this one's client has said its own.
            agent_kept=partial(self._pool.keep, agent),
        )
        self.kept = kept.client


async def _next_open(
    websocket: WebSocket, streams: TunnelStreams, token_id: str, *, reuse: bool
) -> Principal | None:
    """Wait for the next ``open`` on a deferred websocket (accepting it first, with
    ``REUSE_HEADER`` when asked); counted among the deferred ones while it waits."""
    if not streams.defer(token_id):
        await refuse(
            websocket, 503, "busy", "too many streams wait for their open frame", CLOSE_NORMAL
        )
        return None
    try:
        if websocket.application_state == WebSocketState.CONNECTING:
            await websocket.accept(headers=[(REUSE_HEADER.encode(), b"1")] if reuse else None)
        return await _when_opened(websocket)
    finally:
        streams.undefer(token_id)


async def _when_opened(websocket: WebSocket) -> Principal | None:
    """Wait on a deferred stream for ``{"type": "open"}``; the caller's principal then
    (authenticated and allowed again: its token may have been deleted meanwhile), or
    ``None`` after closing the websocket (idle too long, another frame, the client left,
    a bad token).
    """
    try:
        async with asyncio.timeout(DEFER_IDLE):
            frame = await websocket.receive()
    except TimeoutError:
        frame = None
    if frame is None or frame.get("type") != "websocket.receive":
        await close_websocket(websocket, CLOSE_NORMAL, "idle")
        return None
    if frame.get("text") != OPEN_FRAME:
        await close_websocket(websocket, CLOSE_BAD_REQUEST, "expected an open frame")
        return None
    return await websocket_principal(websocket)
