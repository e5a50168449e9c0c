"""``/api/work-sessions/sessions/``: reading work sessions (a page of them, one, its
timeline) and what every route of a session needs: loading it for a principal who may
see it, and its JSON. The changes are in :mod:`fleetgate.controlplane.api.worksessions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from fleetgate.controlplane.api.deps import PrincipalDep, Services, ServicesDep
from fleetgate.controlplane.api.pagination import page_response
from fleetgate.controlplane.api.params import MAX_SEARCH, parse_int, parse_page
from fleetgate.controlplane.api.worksession_json import event_json, session_json
from fleetgate.controlplane.auth import Principal
from fleetgate.controlplane.errors import APIError, invalid_request
from fleetgate.controlplane.store import (
    servers as servers_store,
    worksession_gate as session_gate,
    worksession_list as session_list,
    worksessions as sessions_store,
)
from fleetgate.controlplane.store.worksessions import WorkSessionRow
from fleetgate.controlplane.timeutil import now_us
from fleetgate.controlplane.worksession.lifecycle import Status


__all__ = [
    "detail",
    "list_sessions",
    "load_session",
    "not_found",
    "render_session",
    "render_sessions",
    "router",
    "timeline",
]

router = APIRouter(prefix="/api/work-sessions/sessions")

MAX_WAIT = 60


def not_found() -> APIError:
    """The answer for a session that does not exist or that the principal may not see."""
    return APIError(404, "WORK_SESSION_NOT_FOUND", "No such work session.")


def _visible(row: WorkSessionRow, principal: Principal) -> bool:
    uid = principal.user_id
    return principal.is_superuser or uid in (row.created_by, row.assigned_user)


async def render_session(row: WorkSessionRow, services: Services) -> dict[str, Any]:
    """The session's JSON, with its servers' names."""
    return (await render_sessions([row], services))[0]


async def render_sessions(rows: list[WorkSessionRow], services: Services) -> list[dict[str, Any]]:
    """The sessions' JSON, their servers' names read in one call for the whole page."""
    ids = [server_id for row in rows for server_id in row.server_ids]
    found = await services.db.read(servers_store.summaries, ids) if ids else {}
    out = []
    for row in rows:
        servers = [
            {"id": server_id, "name": found[server_id][0], "is_connected": found[server_id][1]}
            for server_id in row.server_ids
            if server_id in found
        ]
        out.append(session_json(row, servers))
    return out


@router.get("/")
async def list_sessions(
    request: Request, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """A page of sessions, newest first; ``status`` filters (``all``: no filter), ``q``
    searches the purpose, usernames, server names and ids."""
    params = request.query_params
    search = (params.get("q") or "").strip()[:MAX_SEARCH] or None
    status = params.get("status") or None
    if status == "all":
        status = None
    if status is not None and status not in set(Status):
        raise invalid_request(f"status: unknown {status[:40]!r}", "status")
    page = parse_page(params)
    count, rows = await services.db.write(
        session_list.list_work_sessions,
        visible_to=None if principal.is_superuser else principal.user_id,
        status=status,
        now=now_us(),
        offset=page.offset,
        limit=page.size,
        search=search,
    )
    results = await render_sessions(rows, services)
    return JSONResponse(page_response(request, services.settings.public_url, page, count, results))


async def load_session(session_id: str, principal: Principal, services: Services) -> WorkSessionRow:
    """The session, its status settled against the clock; 404 if the principal may not see it."""
    try:
        session_id = str(uuid.UUID(session_id))
    except ValueError:
        raise not_found() from None
    row = await services.db.write(sessions_store.load_settled, session_id, now=now_us())
    if row is None or not _visible(row, principal):
        raise not_found()
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
        row = await load_session(session_id, principal, services)
        remaining = deadline - loop.time()
        if row.status.value != known or remaining <= 0:
            return JSONResponse(await render_session(row, services))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await change.wait()


@router.get("/{session_id}/timeline/")
async def timeline(
    session_id: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """A page of everything done in the session, oldest first."""
    row = await load_session(session_id, principal, services)
    page = parse_page(request.query_params)
    count, events = await services.db.read(
        session_gate.list_events, row.id, offset=page.offset, limit=page.size
    )
    results = [event_json(e) for e in events]
    return JSONResponse(page_response(request, services.settings.public_url, page, count, results))
