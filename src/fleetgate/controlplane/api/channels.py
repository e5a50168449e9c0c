"""What every channel route shares: the caller, the gate, the grant, the relay.

A channel route (terminal, transfer, tunnel stream) authenticates the caller with
:func:`websocket_principal`, checks the work-session gate and signs the grant with
:func:`authorize`, then :func:`serve_channel` asks the agent for the channel and relays.
Every refusal before the relay starts is an HTTP response to the websocket handshake with
the usual ``{code, detail}`` body, so clients handle it exactly as an API error.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import structlog
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocket

from fleetgate.controlplane.api.deps import Services, resolve_server
from fleetgate.controlplane.auth import Principal, resolve_principal
from fleetgate.controlplane.authz import check_rule, rule_for
from fleetgate.controlplane.console.cookies import websocket_authorization
from fleetgate.controlplane.errors import APIError, ChannelFailed
from fleetgate.controlplane.grants import gate_and_sign
from fleetgate.controlplane.hub.relay import relay
from fleetgate.controlplane.store import worksessions as ws_store
from fleetgate.controlplane.timeutil import now_us
from fleetgate.controlplane.worksession.gate import GateDenial
from fleetgate.shared.protocol import ChannelOpen, Grant


__all__ = [
    "Authorized",
    "authorize",
    "deny",
    "serve_channel",
    "services_of",
    "websocket_principal",
]

log = structlog.get_logger("fleetgate.controlplane.channels")

_FAILURE_STATUS = {4403: 403, 4408: 504, 4503: 503}


@dataclass(frozen=True)
class Authorized:
    """An operation the gate allowed: where it runs and the grant the agent verifies."""

    server_id: str
    server_name: str
    grant: Grant
    work_session_id: str | None


def services_of(websocket: WebSocket) -> Services:
    """The application's services, from a websocket route."""
    services: Services = websocket.app.state.services
    return services


async def deny(websocket: WebSocket, status: int, code: str, detail: str) -> None:
    """Refuse the websocket handshake with an HTTP error ``{code, detail}``.

    A server without the ASGI denial-response extension closes before accepting instead
    (the client then sees HTTP 403 without a body).
    """
    response = JSONResponse({"code": code, "detail": detail}, status_code=status)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:
        await websocket.close(code=1008)


async def websocket_principal(websocket: WebSocket) -> Principal | None:
    """The authenticated caller allowed by the endpoint's rule (``authz.RULES``), or
    ``None`` after refusing the handshake (401, or 403 with the rule's code).

    A browser cannot set ``Authorization`` on a websocket: the console's login cookie
    stands in for it when the handshake comes from a page of the same origin.
    """
    services = services_of(websocket)
    header = websocket.headers.get("authorization") or websocket_authorization(
        websocket.headers, websocket.cookies
    )
    principal = None
    if header:
        principal = await resolve_principal(
            services.db, header, now=now_us(), cache=services.principals
        )
    if principal is None:
        await deny(
            websocket, 401, "AUTHENTICATION_FAILED", "Authentication credentials were not valid."
        )
        return None
    route = getattr(websocket.scope.get("route"), "path", websocket.url.path)
    try:
        check_rule(rule_for("WS", route), principal, route=route)
    except APIError as exc:
        await deny(websocket, exc.status, exc.code, exc.detail)
        return None
    return principal


async def authorize(
    services: Services,
    principal: Principal,
    *,
    server: str,
    scope: str,
    work_session: str | None,
    operation_id: str,
    description: str,
) -> Authorized:
    """Gate an operation of ``scope`` on ``server`` and sign its grant.

    Login principals need an active work session (``work_session``) assigned to them that
    includes the server and the scope: a denial is recorded on that session's timeline, an
    allowed operation too (``description`` says what it was). API and service tokens are
    not gated; their grant carries just ``scope``.

    Raises:
        APIError: 404 for an unknown server, 403 with the gate's code for a denial.
    """
    server_id, server_name = await resolve_server(services, server)
    now = now_us()

    def check(conn: sqlite3.Connection) -> Authorized | GateDenial:
        signed = gate_and_sign(
            conn,
            principal,
            services.signer,
            work_session=work_session,
            server_id=server_id,
            server_name=server_name,
            scope=scope,
            operation_id=operation_id,
            description=description,
            now=now,
        )
        if isinstance(signed, GateDenial):
            return signed
        session = signed.session
        if session is not None:
            ws_store.add_event(
                conn,
                session.id,
                scope,
                timestamp=now,
                actor=principal.user_id,
                server_id=server_id,
                data={"operation_id": operation_id, "description": description},
            )
        return Authorized(
            server_id, server_name, signed.grant, None if session is None else session.id
        )

    outcome = await services.db.write(check)
    if isinstance(outcome, GateDenial):
        raise APIError(403, outcome.code, outcome.detail, scope)
    return outcome


async def serve_channel(
    websocket: WebSocket, services: Services, server_id: str, message: ChannelOpen
) -> None:
    """Open ``message``'s channel on the agent, then accept the client and relay.

    The agent is asked first, so its refusal (or absence) is still an HTTP answer to the
    client's handshake. Returns when the channel has ended on both sides.
    """
    log.info("channel_opening", channel_id=str(message.channel_id), kind=message.spec.kind)
    try:
        async with services.hub.channels.attach(server_id, message) as agent:
            await websocket.accept()
            await relay(websocket, agent)
    except ChannelFailed as exc:
        log.info("channel_failed", channel_id=str(message.channel_id), code=exc.code)
        await deny(websocket, _FAILURE_STATUS.get(exc.close_code, 502), exc.code, exc.detail)
