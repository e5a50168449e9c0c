"""``/api/work-sessions/sessions/``: the work-session lifecycle over HTTP (its reads are
in :mod:`fleetgate.controlplane.api.worksession_reads`).

The state machine is :mod:`fleetgate.controlplane.worksession.lifecycle`; these routes check who may
do what, validate bodies, and run each change in one transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from fleetgate.controlplane.api.deps import PrincipalDep, Services, ServicesDep
from fleetgate.controlplane.api.worksession_bodies import (
    MAX_DESCRIPTION,
    OWNER_ENABLED_SCOPES,
    ApproveBody,
    CreateBody,
    ExtendBody,
    UpdateBody,
    extended_expiry,
    parse_policies,
    parse_scope_list,
    parse_scopes,
    parse_window,
)
from fleetgate.controlplane.api.worksession_reads import load_session, not_found, render_session
from fleetgate.controlplane.auth import Principal
from fleetgate.controlplane.errors import APIError, invalid_request, permission_denied
from fleetgate.controlplane.store import (
    servers as servers_store,
    users as users_store,
    worksession_fields as session_fields,
    worksessions as sessions_store,
)
from fleetgate.controlplane.store.worksessions import NewWorkSession, WorkSessionRow
from fleetgate.controlplane.timeutil import now_us
from fleetgate.controlplane.worksession.lifecycle import TERMINAL, Action, InvalidTransition


__all__ = [
    "SIMPLE_ACTIONS",
    "approve",
    "create",
    "extend",
    "router",
]

router = APIRouter(prefix="/api/work-sessions/sessions")

SUPERUSER_ACTIONS = frozenset({Action.APPROVE, Action.REJECT, Action.REVOKE})
SIMPLE_ACTIONS: dict[Action, Callable[..., Any]] = {}
"""The bodiless action routes (``reject``, ``cancel``, ...), callable as
``route(session_id, principal, services)`` by the console."""


def _invalid_transition(exc: InvalidTransition) -> APIError:
    return APIError(
        409,
        "WORK_SESSION_INVALID_TRANSITION",
        f"{exc}; current state: {exc.status.value}",
        exc.status.value,
    )


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
    user = await services.db.read(users_store.find_user, ref)
    if user is None:
        raise invalid_request(f"assigned_user: no user {ref!r}", "assigned_user")
    return user.id


async def _server_ids(
    refs: list[str], scopes: tuple[str, ...], services: Services
) -> tuple[str, ...]:
    ids: list[str] = []
    for ref in refs:
        server = await services.db.read(servers_store.get_server, ref)
        if server is None:
            raise invalid_request(f"servers: no server {ref[:100]!r}", "servers")
        conn = services.hub.connection(server.id)
        if conn is None:
            raise invalid_request(f"servers: server {server.name!r} is not connected", "servers")
        off = [s for s in scopes if s in OWNER_ENABLED_SCOPES and s not in conn.features]
        if off:
            raise invalid_request(
                f"scopes: {off[0]!r} is not enabled on server {server.name!r} "
                "(its owner must turn it on in the agent's configuration)",
                "scopes",
            )
        if server.id not in ids:
            ids.append(server.id)
    return tuple(ids)


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
    starts_at, expires_at = parse_window(body, now, max_us)
    scopes = parse_scopes(body)
    new = NewWorkSession(
        id=str(uuid.uuid4()),
        description=description,
        requester_type=body.requester_type,
        scopes=scopes,
        server_ids=await _server_ids(body.servers, scopes, services),
        sudo_policies=tuple(parse_policies(body.sudo_policies)),
        created_by=principal.user_id,
        assigned_user=await _assignee(body, principal, services),
        starts_at=starts_at,
        expires_at=expires_at,
    )
    row = await services.db.write(
        sessions_store.insert_work_session, new, auto_approve=principal.is_superuser, now=now
    )
    services.work_sessions.changed()
    return JSONResponse(await render_session(row, services), status_code=201)


async def _act(
    session_id: str,
    action: Action,
    principal: Principal,
    services: Services,
    change: Callable[[WorkSessionRow, int], dict[str, Any]] | None = None,
    event: str | None = None,
) -> JSONResponse:
    row = await load_session(session_id, principal, services)
    if action in SUPERUSER_ACTIONS and not principal.is_superuser:
        raise permission_denied(f"Only a superuser may {action.value} a work session.")
    now = now_us()
    try:
        if change is None:
            updated = await services.db.write(
                sessions_store.apply_action, row.id, action, actor=principal.user_id, now=now
            )
        else:
            updated = await services.db.write(
                session_fields.update_fields,
                row.id,
                action,
                actor=principal.user_id,
                now=now,
                event=event or action.value,
                **change(row, now),
            )
    except InvalidTransition as exc:
        raise _invalid_transition(exc) from None
    if updated is None:
        raise not_found()
    services.work_sessions.changed()
    if updated.status in TERMINAL and row.status not in TERMINAL:
        await services.work_sessions.ended(updated)
    return JSONResponse(await render_session(updated, services))


def _simple(action: Action) -> Callable[..., Any]:
    async def route(
        session_id: str, principal: PrincipalDep, services: ServicesDep
    ) -> JSONResponse:
        return await _act(session_id, action, principal, services)

    route.__name__ = f"{action.value}_session"
    route.__doc__ = f"``POST .../<id>/{action.value}/``."
    return route


@router.post("/{session_id}/approve/")
async def approve(
    session_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    body: ApproveBody | None = None,
) -> JSONResponse:
    """Approve a pending request, optionally narrowing its scopes and servers first."""
    if body is None or (body.scopes is None and body.servers is None):
        return await _act(session_id, Action.APPROVE, principal, services)
    row = await load_session(session_id, principal, services)
    if not principal.is_superuser:
        raise permission_denied("Only a superuser may approve a work session.")
    scopes, server_ids = await _narrowed(body, row, services)
    now = now_us()

    def adjust_then_approve(conn: Any) -> WorkSessionRow | None:
        adjusted = session_fields.adjust_request(
            conn, row.id, scopes=scopes, server_ids=server_ids, actor=principal.user_id, now=now
        )
        if adjusted is None:
            return None
        return sessions_store.apply_action(
            conn, row.id, Action.APPROVE, actor=principal.user_id, now=now
        )

    try:
        updated = await services.db.write(adjust_then_approve)
    except InvalidTransition as exc:
        raise _invalid_transition(exc) from None
    if updated is None:
        raise not_found()
    services.work_sessions.changed()
    return JSONResponse(await render_session(updated, services))


async def _narrowed(
    body: ApproveBody, row: WorkSessionRow, services: Services
) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """The approved scopes and servers: each a non-empty subset of what was requested."""
    scopes = None
    if body.scopes is not None:
        extra = [s for s in body.scopes if s not in row.scopes]
        if extra:
            raise invalid_request(f"scopes: {extra[0]!r} was not requested", "scopes")
        scopes = tuple(s for s in row.scopes if s in body.scopes)
        if not scopes:
            raise invalid_request("scopes: at least one scope is required", "scopes")
    server_ids = None
    if body.servers is not None:
        ids = []
        for ref in body.servers:
            server = await services.db.read(servers_store.get_server, ref)
            if server is None or server.id not in row.server_ids:
                raise invalid_request(f"servers: {ref[:100]!r} was not requested", "servers")
            ids.append(server.id)
        server_ids = tuple(s for s in row.server_ids if s in ids)
        if not server_ids:
            raise invalid_request("servers: at least one server is required", "servers")
    return scopes, server_ids


for _action in (
    Action.REJECT,
    Action.ACTIVATE,
    Action.COMPLETE,
    Action.REVOKE,
    Action.CANCEL,
):
    SIMPLE_ACTIONS[_action] = router.post(f"/{{session_id}}/{_action.value}/")(_simple(_action))


def _change_action(principal: Principal, kept: Action) -> Action:
    """Approved means frozen: a superuser's change keeps the status (``kept``); anyone
    else's sends the session back to pending (``amend``)."""
    return kept if principal.is_superuser else Action.AMEND


@router.post("/{session_id}/extend/")
async def extend(
    session_id: str, body: ExtendBody, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """Move ``expires_at`` later.

    A superuser's extend keeps the status, at most the maximum duration from now; anyone
    else's needs approval again (the session goes back to ``pending``) and never takes the
    session beyond the maximum duration from its start.
    """
    max_us = int(services.settings.work_session_max_duration * 1_000_000)
    from_start = not principal.is_superuser

    def change(row: WorkSessionRow, now: int) -> dict[str, Any]:
        expires_at = extended_expiry(
            body, row.expires_at, row.starts_at, now, max_us, from_start=from_start
        )
        return {"expires_at": expires_at}

    action = _change_action(principal, Action.EXTEND)
    return await _act(session_id, action, principal, services, change, event="extend")


@router.patch("/{session_id}/")
async def update(
    session_id: str, body: UpdateBody, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """Change scopes, servers or sudo policies (each replace-all; policies keep the
    ``id`` they are sent with). A non-superuser's change sends the session back to
    ``pending``: it cannot be used until approved again."""
    if body.sudo_policies is None and body.scopes is None and body.servers is None:
        raise invalid_request("give at least one of scopes, servers, sudo_policies", "scopes")
    policies = None if body.sudo_policies is None else parse_policies(body.sudo_policies)
    scopes = None if body.scopes is None else parse_scope_list(body.scopes)
    server_ids = None
    if body.servers is not None:
        # The servers must offer what the session will have: the new scopes, or its own.
        effective = (
            scopes
            if scopes is not None
            else (await load_session(session_id, principal, services)).scopes
        )
        server_ids = await _server_ids(body.servers, effective, services)

    def change(row: WorkSessionRow, now: int) -> dict[str, Any]:
        new_scopes = row.scopes if scopes is None else scopes
        new_policies = row.sudo_policies if policies is None else policies
        if new_policies and "sudo" not in new_scopes:
            raise invalid_request("sudo_policies: the session has no sudo scope", "sudo_policies")
        return {"sudo_policies": policies, "scopes": scopes, "server_ids": server_ids}

    action = _change_action(principal, Action.UPDATE)
    return await _act(session_id, action, principal, services, change, event="update")
