"""Websh: terminal sessions on servers, and the relay of their channels.

``POST /api/websh/terminals/`` creates a terminal (gated by the work-session scope
``websh``); the client then opens ``/ws/websh/<terminal_id>/``, which asks the agent for
a websh channel (a new shell the first time, a reattach afterwards) and relays it. Every
attach goes through the gate again and gets its own grant. The recording arrives from the
agent after the shell ended (``fleetgate.controlplane.api.recordings``).
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocket

from fleetgate.controlplane.api.channels import (
    authorize,
    deny,
    owner_of,
    serve_channel,
    services_of,
    websocket_principal,
)
from fleetgate.controlplane.api.deps import PrincipalDep, Services, ServicesDep, resolve_server
from fleetgate.controlplane.api.pagination import page_response
from fleetgate.controlplane.api.params import parse_page
from fleetgate.controlplane.auth import Principal
from fleetgate.controlplane.authz import require_session_named, server_account
from fleetgate.controlplane.errors import APIError
from fleetgate.controlplane.hub.channelregistry import OpenChannel
from fleetgate.controlplane.store import terminals as store
from fleetgate.controlplane.store.terminals import TerminalRow
from fleetgate.controlplane.timeutil import iso, iso_or_none, now_us
from fleetgate.shared.protocol import ChannelOpen, WebshSpec, content_digest


__all__ = ["CLIENT_PATH", "WEBSH_SCOPE", "router", "terminal_json"]

log = structlog.get_logger("fleetgate.controlplane.websh")

router = APIRouter()

WEBSH_SCOPE = "websh"
CLIENT_PATH = "/ws/websh/{terminal_id}/"


class TerminalCreateBody(BaseModel):
    """``POST /api/websh/terminals/``."""

    model_config = ConfigDict(extra="forbid")
    server: str = Field(min_length=1, max_length=255)
    username: str | None = Field(default=None, min_length=1, max_length=64)
    groupname: str | None = Field(default=None, max_length=64)
    shell: str | None = Field(default=None, max_length=4096)
    rows: int = Field(default=24, ge=1, le=1000)
    cols: int = Field(default=80, ge=1, le=1000)
    work_session: str | None = None


def terminal_json(row: TerminalRow) -> dict[str, Any]:
    """The public representation of a terminal."""
    recording = None
    if row.recorded_at is not None:
        recording = {
            "size": row.recording_size,
            "sha256": row.recording_sha256,
            "recorded_at": iso(row.recorded_at),
            "url": f"/api/websh/terminals/{row.id}/recording/",
        }
    return {
        "id": row.id,
        "server": row.server_id,
        "server_name": row.server_name,
        "username": row.username,
        "groupname": row.groupname,
        "shell": row.shell,
        "rows": row.rows,
        "cols": row.cols,
        "work_session": row.work_session_id,
        "status": row.status,
        "attaches": row.attaches,
        "created_at": iso(row.created_at),
        "closed_at": iso_or_none(row.closed_at),
        "close_reason": row.close_reason,
        "websocket": CLIENT_PATH.format(terminal_id=row.id),
        "recording": recording,
    }


def is_owner(principal: Principal, row: TerminalRow) -> bool:
    """Whether ``principal`` opened the terminal (the same user; a service: the same token)."""
    if row.owner_user is not None:
        return principal.user_id == row.owner_user
    return principal.user is None and principal.token.id == row.owner_token


def _check_spec(body: TerminalCreateBody, account: str, terminal_id: str) -> WebshSpec:
    try:
        return WebshSpec(
            terminal_id=uuid.UUID(terminal_id),
            username=account,
            groupname=body.groupname,
            shell=body.shell,
            rows=body.rows,
            cols=body.cols,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise APIError(400, "INVALID_REQUEST", f"{field}: {first['msg']}", field) from None


@router.post("/api/websh/terminals/", status_code=201)
async def create_terminal(
    body: TerminalCreateBody, request: Request, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Create a terminal on a server (the shell starts when the client attaches).

    It runs as ``username`` (default root) for a superuser or an ungated token; a gated
    non-superuser gets their own server account (``authz.server_account``).
    """
    requested = body.work_session or request.headers.get("x-work-session") or None
    require_session_named(principal, requested, WEBSH_SCOPE)
    account = server_account(principal, body.username, body.groupname, what="a terminal")
    terminal_id = str(uuid.uuid4())
    spec = _check_spec(body, account, terminal_id)
    allowed = await authorize(
        services,
        principal,
        server=body.server,
        scope=WEBSH_SCOPE,
        work_session=requested,
        operation_id=terminal_id,
        description=f"websh {account}@{body.server}",
        content=content_digest(spec),
    )
    now = now_us()

    def insert(conn: Any) -> TerminalRow | None:
        store.insert_terminal(
            conn,
            terminal_id=terminal_id,
            server_id=allowed.server_id,
            username=account,
            groupname=body.groupname,
            shell=body.shell,
            rows=body.rows,
            cols=body.cols,
            work_session_id=allowed.work_session_id,
            owner_user=principal.user_id,
            owner_token=principal.token.id,
            now=now,
        )
        return store.get_terminal(conn, terminal_id)

    row = await services.db.write(insert)
    assert row is not None
    log.info("terminal.created", terminal_id=terminal_id, server_id=allowed.server_id)
    return terminal_json(row)


async def _visible(services: Services, principal: Principal, terminal_id: str) -> TerminalRow:
    row = await services.db.read(store.get_terminal, terminal_id)
    if row is None or not (principal.is_superuser or is_owner(principal, row)):
        raise APIError(404, "TERMINAL_NOT_FOUND", "No such terminal.")
    return row


@router.get("/api/websh/terminals/")
async def list_terminals(
    request: Request, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Terminals, newest first: a superuser sees all, others their own.

    Filters: ``work_session``, ``server`` (name or id).
    """
    params = request.query_params
    page = parse_page(params)
    server_id = None
    if params.get("server"):
        server_id, _ = await resolve_server(services, params["server"])
    mine = not principal.is_superuser
    rows, count = await services.db.read(
        store.list_terminals,
        owner_user=principal.user_id if mine and principal.user is not None else None,
        owner_token=principal.token.id if mine and principal.user is None else None,
        work_session_id=params.get("work_session") or None,
        server_id=server_id,
        limit=page.size,
        offset=(page.number - 1) * page.size,
    )
    public_url = services.settings.public_url
    return page_response(request, public_url, page, count, [terminal_json(r) for r in rows])


@router.get("/api/websh/terminals/{terminal_id}/")
async def get_terminal(
    terminal_id: str, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """One terminal."""
    return terminal_json(await _visible(services, principal, terminal_id))


@router.delete("/api/websh/terminals/{terminal_id}/", status_code=204)
async def close_terminal(
    terminal_id: str, principal: PrincipalDep, services: ServicesDep
) -> Response:
    """End a terminal: the agent ends its shell now (``terminal.end``), attached or not."""
    row = await _visible(services, principal, terminal_id)
    await _close(services, row, "closed", "closed by API")
    return Response(status_code=204)


async def _close(services: Services, row: TerminalRow, code: str, reason: str) -> None:
    """End the terminal on the agent (``code`` is the exit frame's reason) and store it."""
    if row.status != "closed":
        # By terminal id, not channel: a detached shell ends now, not at its grace's end.
        await services.hub.channels.end_terminal(row.server_id, row.id, code)
    await services.db.write(store.mark_closed, row.id, reason=reason, now=now_us())


async def serve_client(websocket: WebSocket, terminal_id: str) -> None:
    """``/ws/websh/<terminal_id>/``: attach (or reattach) the caller to the terminal.

    Query parameters ``rows``, ``cols`` (the client's window) and ``term`` (its TERM).
    """
    services = services_of(websocket)
    principal = await websocket_principal(websocket)
    if principal is None:
        return
    row = await services.db.read(store.get_terminal, terminal_id)
    if row is None or not is_owner(principal, row):
        await deny(websocket, 404, "TERMINAL_NOT_FOUND", "No such terminal.")
        return
    if row.status == "closed":
        await deny(websocket, 409, "TERMINAL_CLOSED", "The terminal has ended.")
        return
    channel_id = uuid.uuid4()
    params = websocket.query_params
    try:
        spec = WebshSpec(
            terminal_id=uuid.UUID(row.id),
            username=row.username,
            groupname=row.groupname,
            shell=row.shell,
            rows=int(params.get("rows") or row.rows),
            cols=int(params.get("cols") or row.cols),
            term=params.get("term") or None,
            attach=row.status != "created",
        )
        allowed = await authorize(
            services,
            principal,
            server=row.server_id,
            scope=WEBSH_SCOPE,
            work_session=row.work_session_id,
            operation_id=str(channel_id),
            description=f"websh attach {row.username}@{row.server_name}",
            content=content_digest(spec),
        )
    except (ValueError, ValidationError) as exc:
        await deny(websocket, 400, "INVALID_REQUEST", str(exc).splitlines()[0][:200])
        return
    except APIError as exc:
        await deny(websocket, exc.status, exc.code, exc.detail)
        return
    message = ChannelOpen(channel_id=channel_id, spec=spec, grant=allowed.grant)
    channel = OpenChannel(
        channel_id,
        "websh",
        row.server_id,
        owner_of(principal, allowed.work_session_id),
        resource_id=row.id,
    )

    async def attached() -> None:
        await services.db.write(store.mark_attached, row.id, str(channel_id))

    failed = await serve_channel(websocket, services, message, channel, on_attached=attached)
    if failed is not None:
        log.info("terminal.attach_failed", terminal_id=row.id, code=failed.code)
        if failed.code in {"unknown_terminal", "terminal_closed"}:
            await services.db.write(store.mark_closed, row.id, reason=failed.code, now=now_us())
