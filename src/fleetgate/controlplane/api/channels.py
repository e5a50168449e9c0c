"""What every channel route shares: the caller, the gate, the grant, the relay.

A channel route (terminal, transfer, tunnel stream) authenticates the caller with
:func:`websocket_principal`, checks the work-session gate and signs the grant with
:func:`authorize`, then :func:`serve_channel` asks the agent for the channel and relays.
Every refusal before the relay starts is an HTTP response to the websocket handshake with
the usual ``{code, detail}`` body, so clients handle it exactly as an API error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import sqlalchemy
import structlog
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketState

from fleetgate.controlplane.api.deps import Services, resolve_server
from fleetgate.controlplane.auth import Principal, resolve_principal
from fleetgate.controlplane.authz import check_rule, rule_for
from fleetgate.controlplane.console.cookies import websocket_authorization
from fleetgate.controlplane.errors import APIError, ChannelFailed
from fleetgate.controlplane.grants import gate_and_sign
from fleetgate.controlplane.hub.channelregistry import ChannelOwner, OpenChannel
from fleetgate.controlplane.hub.relay import close_websocket, relay
from fleetgate.controlplane.store import worksessions as sessions_store
from fleetgate.controlplane.timeutil import now_us
from fleetgate.controlplane.worksession.gate import GateDenial
from fleetgate.controlplane.wsprotocol import queued_bytes
from fleetgate.shared.protocol import ChannelOpen, Grant
from fleetgate.shared.protocol.channels import CLOSE_REFUSED, REVOCATION_CODES, refusal_reason


__all__ = [
    "Authorized",
    "Relayer",
    "authorize",
    "deny",
    "owner_of",
    "refuse",
    "serve_channel",
    "services_of",
    "websocket_principal",
]

log = structlog.get_logger("fleetgate.controlplane.channels")

_FAILURE_STATUS = {4403: 403, 4408: 504, 4503: 503}

Relayer = Callable[[WebSocket, WebSocket], Awaitable[None]]
"""Relays a client's websocket and the agent's (``hub.relay.relay`` unless told)."""


@dataclass(frozen=True)
class Authorized:
    """An operation the gate allowed: where it runs and the grant the agent verifies."""

    server_id: str
    server_name: str
    grant: Grant
    work_session_id: str | None


def owner_of(principal: Principal, work_session_id: str | None) -> ChannelOwner:
    """The owner a channel opened by ``principal`` under ``work_session_id`` records."""
    return ChannelOwner(principal.token.id, principal.user_id, work_session_id)


def services_of(websocket: WebSocket) -> Services:
    """The application's services, from a websocket route."""
    services: Services = websocket.app.state.services
    return services


async def refuse(
    websocket: WebSocket, status: int, code: str, detail: str, close_code: int = CLOSE_REFUSED
) -> None:
    """Refuse a channel: an HTTP error (:func:`deny`) while the handshake is not answered,
    else a close with ``close_code`` and ``{code, detail}`` as reason (a deferred stream)."""
    if websocket.application_state == WebSocketState.CONNECTING:
        await deny(websocket, status, code, detail)
    else:
        await close_websocket(websocket, close_code, refusal_reason(code, detail))


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
    ``None`` after refusing the handshake (401, or 403 with the rule's code), or closing
    the websocket if it was accepted already (a deferred stream checks again when used).

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
        await refuse(
            websocket, 401, "AUTHENTICATION_FAILED", "Authentication credentials were not valid."
        )
        return None
    # The matched route's path (not the URL, which would be parsed for nothing).
    route = getattr(websocket.scope.get("route"), "path", None) or websocket.url.path
    try:
        check_rule(rule_for("WS", route), principal, route=route)
    except APIError as exc:
        await refuse(websocket, exc.status, exc.code, exc.detail)
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
    content: str,
) -> Authorized:
    """Gate an operation of ``scope`` on ``server`` and sign its grant.

    Login principals need an active work session (``work_session``) assigned to them that
    includes the server and the scope: a denial is recorded on that session's timeline, an
    allowed operation too (``description`` says what it was). API and service tokens are
    not gated; their grant carries just ``scope``. Every grant binds ``content``, the
    digest of what the operation does (``fleetgate.shared.protocol.content``).

    Raises:
        APIError: 404 for an unknown server, 403 with the gate's code for a denial.
    """
    server_id, server_name = await resolve_server(services, server)
    now = now_us()

    def check(conn: sqlalchemy.Connection) -> Authorized | GateDenial:
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
            content=content,
            now=now,
        )
        if isinstance(signed, GateDenial):
            return signed
        session = signed.session
        if session is not None:
            sessions_store.add_event(
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
    websocket: WebSocket,
    services: Services,
    message: ChannelOpen,
    channel: OpenChannel,
    *,
    on_attached: Callable[[], Awaitable[None]] | None = None,
    relayer: Relayer = relay,
    pipelined: bool = False,
) -> ChannelFailed | None:
    """Open ``message``'s channel on the agent, then accept the client and relay (with
    ``relayer``: a tunnel stream's may leave both websockets open for the next stream).
    ``pipelined``: when the client's websocket is accepted already, its frames may follow
    the ``channel.open`` before the agent answered (``ChannelBroker.attach(early=)``): the
    relayer checks the answer (``ChannelPool.acceptance``) and raises its refusal.

    The agent is asked first, so its refusal (or absence) is still an HTTP answer to the
    client's handshake. ``channel`` is registered for the whole relay: when it is ended
    (revocation, its tunnel closed), the relay stops, the agent gets ``channel.close``
    and the client a close 4403 with ``{"code", "detail"}`` (or an HTTP 403 if its
    handshake was not answered yet). Returns when the channel has ended on both sides;
    the failure, if the channel could not be opened (the client was already told). A
    websocket accepted before (a deferred tunnel stream) gets its refusals as closes.
    """
    log.info("channel.opening", channel_id=str(message.channel_id), kind=message.spec.kind)
    registry = services.hub.channels.open
    try:
        registry.register(channel)
    except ChannelFailed as exc:
        log.info("channel.refused", channel_id=str(message.channel_id), code=exc.code)
        await refuse(websocket, 403, exc.code, exc.detail)
        return exc
    early = pipelined and websocket.application_state == WebSocketState.CONNECTED
    # A pipelined stream on an idle pooled websocket: its open leaves from here, before
    # the relay's tasks first run (a loop turn later), while the agent works on it.
    # The client's first bytes, there already most often, leave with the open.
    pooled = (
        services.hub.channels.attach_pooled(
            channel.server_id, message, early=True, first=partial(queued_bytes, websocket)
        )
        if early
        else None
    )
    try:
        async with contextlib.AsyncExitStack() as attached:
            agent = None
            if pooled is not None:
                try:
                    agent = await attached.enter_async_context(pooled)
                except ChannelFailed as exc:
                    return await _failed(websocket, message, exc)
            async with asyncio.TaskGroup() as tg:
                relaying = tg.create_task(
                    _attach_and_relay(
                        websocket,
                        services,
                        channel.server_id,
                        message,
                        on_attached,
                        relayer,
                        early=early,
                        agent=agent,
                    )
                )
                # Only a channel that must stop (revoked, its tunnel closed) gets a task
                # that tells its agent and stops the relay: most end on their own, and a
                # task per channel waiting for that was one more per tunnel stream.
                channel.on_end = partial(_when_ended, tg, services, channel, relaying)
                if channel.ended.is_set():
                    channel.on_end()
    finally:
        channel.on_end = None
        registry.unregister(channel)
    if not relaying.cancelled():
        return relaying.result()
    code, detail = channel.why or ("closed", "the channel was closed")
    log.info("channel.ended", channel_id=str(channel.channel_id), code=code)
    if websocket.application_state == WebSocketState.CONNECTED:
        await close_websocket(websocket, CLOSE_REFUSED, refusal_reason(code, detail))
    elif websocket.application_state == WebSocketState.CONNECTING:
        revoked = code in REVOCATION_CODES or code.startswith("work_session_")
        await deny(websocket, 403 if revoked else 409, code, detail)
    return None


def _when_ended(
    tg: asyncio.TaskGroup,
    services: Services,
    channel: OpenChannel,
    relaying: asyncio.Task[ChannelFailed | None],
) -> None:
    """The channel must stop (``OpenChannel.end``): unless its relay is over, a task of
    the channel's group tells the agent, then stops the relay."""
    if relaying.done():
        return
    try:
        tg.create_task(_close_agent_then_relay(services, channel, relaying))
    except RuntimeError:  # the group is ending (the relay failed): so is the channel
        relaying.cancel()


async def _close_agent_then_relay(
    services: Services, channel: OpenChannel, relaying: asyncio.Task[ChannelFailed | None]
) -> None:
    """Tell the agent first that the channel ended: the agent's task is cancelled (a
    terminal ends instead of detaching) before the relay drops the link.

    The relay is cancelled in the same step as the ``channel.close`` is written, not a
    loop turn later by a done callback: the agent's answer (its link closed with 1000)
    must not reach the relay first, which would pass that on to the client instead of
    the reason the channel ended."""
    detail = channel.why[1] if channel.why else "closed"
    await services.hub.channels.close(channel.server_id, channel.channel_id, detail)
    relaying.cancel()


async def _attach_and_relay(
    websocket: WebSocket,
    services: Services,
    server_id: str,
    message: ChannelOpen,
    on_attached: Callable[[], Awaitable[None]] | None,
    relayer: Relayer,
    *,
    early: bool,
    agent: WebSocket | None,
) -> ChannelFailed | None:
    """Attach the agent's side (unless ``agent`` is attached already) and relay."""
    try:
        if agent is not None:
            await _relay(websocket, agent, on_attached, relayer)
        else:
            async with services.hub.channels.attach(server_id, message, early=early) as side:
                await _relay(websocket, side, on_attached, relayer)
    except ChannelFailed as exc:
        return await _failed(websocket, message, exc)
    return None


async def _relay(
    websocket: WebSocket,
    agent: WebSocket,
    on_attached: Callable[[], Awaitable[None]] | None,
    relayer: Relayer,
) -> None:
    if on_attached is not None:
        await on_attached()
    if websocket.application_state == WebSocketState.CONNECTING:
        await websocket.accept()
    await relayer(websocket, agent)


async def _failed(websocket: WebSocket, message: ChannelOpen, exc: ChannelFailed) -> ChannelFailed:
    """Tell the client why the channel could not be opened (or relayed); ``exc``."""
    log.info("channel.failed", channel_id=str(message.channel_id), code=exc.code)
    status = _FAILURE_STATUS.get(exc.close_code, 502)
    await refuse(websocket, status, exc.code, exc.detail, exc.close_code)
    return exc
