"""``/api/work-sessions/sessions/``: the work-session lifecycle over HTTP.

The state machine is :mod:`controlplane.worksession.lifecycle`; these routes check who may
do what, validate bodies, and run each change in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from controlplane.api.deps import PrincipalDep, Services, ServicesDep
from controlplane.api.pagination import page_response
from controlplane.api.params import parse_int, parse_page
from controlplane.api.worksession_json import event_json, session_json
from controlplane.auth import Principal
from controlplane.errors import APIError, invalid_request, permission_denied
from controlplane.store import (
    servers as servers_store,
    users as users_store,
    worksessions as ws_store,
)
from controlplane.store.worksessions import NewWorkSession, WorkSessionRow
from controlplane.timeutil import iso, now_us, to_us
from controlplane.worksession.durations import parse_duration
from controlplane.worksession.gate import SCOPES
from controlplane.worksession.lifecycle import TERMINAL, Action, InvalidTransition, Status


__all__ = ["DEFAULT_SCOPES", "router"]

router = APIRouter(prefix="/api/work-sessions/sessions")

DEFAULT_SCOPES = ("websh", "webftp", "command", "sudo")
"""Selected by default in the request guide."""
MAX_DESCRIPTION = 2048
MAX_WAIT = 60
SUPERUSER_ACTIONS = frozenset({Action.APPROVE, Action.REJECT, Action.REVOKE})


class SudoPolicy(BaseModel):
    """One declared set of sudo command patterns (stored as given)."""

    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    commands: list[str] = Field(min_length=1, max_length=100)
    reason: str = Field(default="", max_length=1024)


class CreateBody(BaseModel):
    """``POST /api/work-sessions/sessions/``."""

    model_config = ConfigDict(extra="ignore")
    description: str = Field(validation_alias=AliasChoices("description", "purpose"))
    servers: list[str] = Field(min_length=1, max_length=1000)
    scopes: list[str] | None = None
    assigned_user: int | str | None = None
    requester_type: Literal["user", "agent"] = "user"
    duration: str | None = None
    starts_at: datetime | None = None
    expires_at: datetime | None = None
    sudo_policies: list[SudoPolicy] | None = None


class ExtendBody(BaseModel):
    """``POST .../extend/``: a new ``expires_at`` or a ``duration`` added from now."""

    model_config = ConfigDict(extra="ignore")
    expires_at: datetime | None = None
    duration: str | None = None


class UpdateBody(BaseModel):
    """``PATCH .../<id>/``: replace the sudo policies."""

    model_config = ConfigDict(extra="ignore")
    sudo_policies: list[SudoPolicy]


def _not_found() -> APIError:
    return APIError(404, "WORK_SESSION_NOT_FOUND", "No such work session.")


def _invalid_transition(exc: InvalidTransition) -> APIError:
    return APIError(
        409,
        "WORK_SESSION_INVALID_TRANSITION",
        f"{exc}; current state: {exc.status.value}",
        exc.status.value,
    )


def _visible(row: WorkSessionRow, principal: Principal) -> bool:
    uid = principal.user_id
    return principal.is_superuser or uid in (row.created_by, row.assigned_user)


def _policies(policies: list[SudoPolicy] | None) -> list[dict[str, Any]]:
    out = []
    for policy in policies or []:
        commands = [c.strip() for c in policy.commands]
        if any(not c or len(c) > 4096 for c in commands):
            raise invalid_request("sudo_policies: patterns must be non-empty strings", "sudo")
        out.append(
            {"id": policy.id or uuid.uuid4().hex, "commands": commands, "reason": policy.reason}
        )
    return out


def _scopes(body: CreateBody) -> tuple[str, ...]:
    scopes = list(DEFAULT_SCOPES if body.scopes is None else body.scopes)
    if body.sudo_policies and "sudo" not in scopes:
        scopes.append("sudo")
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise invalid_request(f"scopes: unknown {bad[0]!r}; valid: {', '.join(SCOPES)}", "scopes")
    if not scopes:
        raise invalid_request("scopes: at least one scope is required", "scopes")
    return tuple(s for s in SCOPES if s in scopes)


def _window(body: CreateBody, now: int, max_us: int) -> tuple[int, int]:
    starts_at = now if body.starts_at is None else max(now, to_us(body.starts_at))
    if (body.duration is None) == (body.expires_at is None):
        raise invalid_request("give exactly one of duration and expires_at", "expires_at")
    if body.duration is not None:
        try:
            expires_at = starts_at + parse_duration(body.duration) * 1_000_000
        except ValueError as exc:
            raise invalid_request(f"duration: {exc}", "duration") from None
    else:
        assert body.expires_at is not None
        expires_at = to_us(body.expires_at)
    if expires_at <= starts_at:
        raise invalid_request("expires_at: must be after the start", "expires_at")
    if expires_at - starts_at > max_us:
        raise invalid_request(
            f"expires_at: longer than the maximum of {max_us // 60_000_000} minutes", "expires_at"
        )
    return starts_at, expires_at


async def _assignee(body: CreateBody, principal: Principal, services: Services) -> int:
    if body.assigned_user is None or body.assigned_user == principal.user_id:
        if principal.user_id is None:
            raise invalid_request(
                "assigned_user: a service must name the assignee", "assigned_user"
            )
        return principal.user_id
    if not principal.is_superuser:
        raise permission_denied("Only a superuser may assign a session to another user.")
    ref = body.assigned_user
    if isinstance(ref, int):
        user = await services.db.read(users_store.get_user, ref)
    else:
        found = await services.db.read(users_store.get_user_by_username, ref)
        user = None if found is None else found[0]
    if user is None:
        raise invalid_request(f"assigned_user: no user {ref!r}", "assigned_user")
    return user.id


async def _server_ids(refs: list[str], services: Services) -> tuple[str, ...]:
    ids: list[str] = []
    for ref in refs:
        server = await services.db.read(servers_store.get_server, ref)
        if server is None:
            raise invalid_request(f"servers: no server {ref[:100]!r}", "servers")
        if services.hub.connection(server.id) is None:
            raise invalid_request(f"servers: server {server.name!r} is not connected", "servers")
        if server.id not in ids:
            ids.append(server.id)
    return tuple(ids)


async def _render(row: WorkSessionRow, services: Services) -> dict[str, Any]:
    servers = []
    for server_id in row.server_ids:
        server = await services.db.read(servers_store.get_server, server_id)
        if server is not None:
            servers.append(
                {"id": server.id, "name": server.name, "is_connected": server.is_connected}
            )
    return session_json(row, servers)


@router.post("/", status_code=201)
async def create(body: CreateBody, principal: PrincipalDep, services: ServicesDep) -> JSONResponse:
    """Request a work session; a superuser's request is approved (and started) at once."""
    description = body.description.strip()
    if not description or len(description) > MAX_DESCRIPTION:
        raise invalid_request(
            f"description: required, at most {MAX_DESCRIPTION} characters", "description"
        )
    now = now_us()
    max_us = int(services.settings.work_session_max_duration * 1_000_000)
    starts_at, expires_at = _window(body, now, max_us)
    new = NewWorkSession(
        id=str(uuid.uuid4()),
        description=description,
        requester_type=body.requester_type,
        scopes=_scopes(body),
        server_ids=await _server_ids(body.servers, services),
        sudo_policies=tuple(_policies(body.sudo_policies)),
        created_by=principal.user_id,
        assigned_user=await _assignee(body, principal, services),
        starts_at=starts_at,
        expires_at=expires_at,
    )
    row = await services.db.write(
        ws_store.insert_work_session, new, auto_approve=principal.is_superuser, now=now
    )
    services.work_sessions.changed()
    return JSONResponse(await _render(row, services), status_code=201)


@router.get("/")
async def list_sessions(
    request: Request, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """A page of sessions, newest first; ``status`` filters (``all``: no filter)."""
    params = request.query_params
    status = params.get("status") or None
    if status == "all":
        status = None
    if status is not None and status not in set(Status):
        raise invalid_request(f"status: unknown {status[:40]!r}", "status")
    page = parse_page(params)
    count, rows = await services.db.write(
        ws_store.list_work_sessions,
        visible_to=None if principal.is_superuser else principal.user_id,
        status=status,
        now=now_us(),
        offset=page.offset,
        limit=page.size,
    )
    results = [await _render(r, services) for r in rows]
    return JSONResponse(page_response(request, services.settings.public_url, page, count, results))


async def _load(session_id: str, principal: Principal, services: Services) -> WorkSessionRow:
    try:
        session_id = str(uuid.UUID(session_id))
    except ValueError:
        raise _not_found() from None
    row = await services.db.write(ws_store.load_settled, session_id, now=now_us())
    if row is None or not _visible(row, principal):
        raise _not_found()
    return row


@router.get("/{session_id}/")
async def detail(
    session_id: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """One session, its status settled against the clock.

    With ``?status=S&wait=SECONDS`` (at most 60) the answer waits until the session's
    status is no longer ``S`` or the time is up: a client waiting for an approval needs
    no polling schedule.
    """
    known = request.query_params.get("status")
    wait = parse_int(request.query_params, "wait", minimum=0, maximum=MAX_WAIT) or 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        change = services.work_sessions.next_change()
        row = await _load(session_id, principal, services)
        remaining = deadline - loop.time()
        if row.status.value != known or remaining <= 0:
            return JSONResponse(await _render(row, services))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await change.wait()


async def _act(
    session_id: str,
    action: Action,
    principal: Principal,
    services: Services,
    change: Callable[[WorkSessionRow, int], dict[str, Any]] | None = None,
) -> JSONResponse:
    row = await _load(session_id, principal, services)
    if action in SUPERUSER_ACTIONS and not principal.is_superuser:
        raise permission_denied(f"Only a superuser may {action.value} a work session.")
    now = now_us()
    try:
        if change is None:
            updated = await services.db.write(
                ws_store.apply_action, row.id, action, actor=principal.user_id, now=now
            )
        else:
            updated = await services.db.write(
                ws_store.update_fields,
                row.id,
                action,
                actor=principal.user_id,
                now=now,
                **change(row, now),
            )
    except InvalidTransition as exc:
        raise _invalid_transition(exc) from None
    if updated is None:
        raise _not_found()
    services.work_sessions.changed()
    if updated.status in TERMINAL and row.status not in TERMINAL:
        await services.work_sessions.ended(updated)
    return JSONResponse(await _render(updated, services))


def _simple(action: Action) -> Callable[..., Any]:
    async def route(
        session_id: str, principal: PrincipalDep, services: ServicesDep
    ) -> JSONResponse:
        return await _act(session_id, action, principal, services)

    route.__name__ = f"{action.value}_session"
    route.__doc__ = f"``POST .../<id>/{action.value}/``."
    return route


for _action in (
    Action.APPROVE,
    Action.REJECT,
    Action.ACTIVATE,
    Action.COMPLETE,
    Action.REVOKE,
    Action.CANCEL,
):
    router.post(f"/{{session_id}}/{_action.value}/")(_simple(_action))


@router.post("/{session_id}/extend/")
async def extend(
    session_id: str, body: ExtendBody, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """Move ``expires_at`` later, never beyond the maximum duration from now."""
    max_us = int(services.settings.work_session_max_duration * 1_000_000)

    def change(row: WorkSessionRow, now: int) -> dict[str, Any]:
        if (body.duration is None) == (body.expires_at is None):
            raise invalid_request("give exactly one of duration and expires_at", "expires_at")
        if body.duration is not None:
            try:
                expires_at = max(now, row.expires_at) + parse_duration(body.duration) * 1_000_000
            except ValueError as exc:
                raise invalid_request(f"duration: {exc}", "duration") from None
        else:
            assert body.expires_at is not None
            expires_at = to_us(body.expires_at)
        if expires_at <= row.expires_at:
            raise invalid_request(
                f"expires_at: must be later than the current {iso(row.expires_at)}", "expires_at"
            )
        if expires_at - max(now, row.starts_at) > max_us:
            raise invalid_request(
                f"expires_at: beyond the maximum of {max_us // 60_000_000} minutes", "expires_at"
            )
        return {"expires_at": expires_at}

    return await _act(session_id, Action.EXTEND, principal, services, change)


@router.patch("/{session_id}/")
async def update(
    session_id: str, body: UpdateBody, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """Replace the sudo policies (replace-all; policies keep the ``id`` they are sent with)."""
    policies = _policies(body.sudo_policies)

    def change(row: WorkSessionRow, now: int) -> dict[str, Any]:
        if policies and "sudo" not in row.scopes:
            raise invalid_request("sudo_policies: the session has no sudo scope", "sudo_policies")
        return {"sudo_policies": policies}

    return await _act(session_id, Action.UPDATE, principal, services, change)


@router.get("/{session_id}/timeline/")
async def timeline(
    session_id: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """A page of everything done in the session, oldest first."""
    row = await _load(session_id, principal, services)
    page = parse_page(request.query_params)
    count, events = await services.db.read(
        ws_store.list_events, row.id, offset=page.offset, limit=page.size
    )
    results = [event_json(e) for e in events]
    return JSONResponse(page_response(request, services.settings.public_url, page, count, results))
