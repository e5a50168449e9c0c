"""``/api/events/fanouts/<id>/...``: a fan-out's aggregated status, paged results and
merged output stream (the create is in :mod:`fleetgate.controlplane.api.fanouts`)."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from fleetgate.controlplane.api.commands import COMMAND_SCOPE, SUDO_SCOPE
from fleetgate.controlplane.api.deps import PrincipalDep, Services, ServicesDep
from fleetgate.controlplane.api.fanout_stream import stream_fanout
from fleetgate.controlplane.api.fanouts import MAX_TARGETS
from fleetgate.controlplane.api.pagination import page_response
from fleetgate.controlplane.api.params import parse_page
from fleetgate.controlplane.api.serializers import command_json
from fleetgate.controlplane.auth import Principal
from fleetgate.controlplane.errors import APIError, invalid_request
from fleetgate.controlplane.store import fanouts as fanout_store, worksession_gate as session_gate
from fleetgate.controlplane.store.fanouts import FANOUT_STATES, FanoutRow
from fleetgate.controlplane.timeutil import iso, now_us
from fleetgate.controlplane.worksession.gate import GateDenial


__all__ = ["fanout_json", "router"]

router = APIRouter(prefix="/api/events/fanouts")


async def _visible(fanout_id: str, principal: Principal, services: Services) -> FanoutRow:
    try:
        fanout_id = str(uuid.UUID(fanout_id))
    except ValueError:
        raise _not_found() from None
    row = await services.db.read(fanout_store.get_fanout, fanout_id)
    if row is None or not (principal.is_superuser or row.requested_by == principal.user_id):
        raise _not_found()
    return row


def _not_found() -> APIError:
    return APIError(404, "FANOUT_NOT_FOUND", "No such fan-out.")


async def _readable(
    fanout_id: str, request: Request, principal: Principal, services: Services
) -> FanoutRow:
    """A fan-out whose output the caller may read: like ``exec logs``, a login principal
    needs a work session covering every server of the fan-out."""
    row = await _visible(fanout_id, principal, services)
    if not principal.gated:
        return row
    requested = request.query_params.get("work_session") or request.headers.get("x-work-session")
    now = now_us()

    def check(conn: sqlalchemy.Connection) -> GateDenial | None:
        _, results = fanout_store.list_results(
            conn, row.id, state=None, limit=MAX_TARGETS, offset=0
        )
        for command in results:
            scope = SUDO_SCOPE if command.sudo else COMMAND_SCOPE
            denial, _ = session_gate.gate_and_record(
                conn,
                requested or None,
                user_id=principal.user_id,
                server_id=command.server_id,
                server_name=command.server_name,
                scope=scope,
                line=f"exec logs fanout {row.id}",
                now=now,
            )
            if denial is not None:
                return denial
        return None

    denial = await services.db.write(check)
    if denial is not None:
        raise APIError(403, denial.code, denial.detail, COMMAND_SCOPE)
    return row


def fanout_json(row: FanoutRow, counts: dict[str, int]) -> dict[str, Any]:
    """The fan-out object: what was asked, and how many servers are in each state."""
    finished = counts["succeeded"] + counts["failed"]
    return {
        "id": row.id,
        "line": row.line,
        "target": row.target,
        "requested_by": row.requested_by,
        "added_at": iso(row.created_at),
        "total": row.total,
        "counts": counts,
        "done": finished == row.total,
        "success": None if finished < row.total else counts["failed"] == 0,
    }


@router.get("/{fanout_id}/")
async def get_fanout(
    fanout_id: str, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """The fan-out and its aggregated status (no output: not gated)."""
    row = await _visible(fanout_id, principal, services)
    counts = await services.db.read(fanout_store.counts, row.id)
    return JSONResponse(fanout_json(row, counts))


@router.get("/{fanout_id}/results/")
async def list_results(
    fanout_id: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """A page of the fan-out's commands (one per server, by server name);
    ``?state=queued|running|succeeded|failed`` filters."""
    row = await _readable(fanout_id, request, principal, services)
    state = request.query_params.get("state") or None
    if state is not None and state not in FANOUT_STATES:
        raise invalid_request(f"state: must be one of {', '.join(FANOUT_STATES)}", "state")
    page = parse_page(request.query_params)
    count, rows = await services.db.read(
        fanout_store.list_results, row.id, state=state, limit=page.size, offset=page.offset
    )
    stamp = now_us()
    results = [{**command_json(r, now=stamp), "fanout": row.id} for r in rows]
    return JSONResponse(page_response(request, services.settings.public_url, page, count, results))


@router.get("/{fanout_id}/stream/")
async def stream(
    fanout_id: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> StreamingResponse:
    """NDJSON: every server's output as it comes (each line names its server), each
    server's ``finished`` line, then one ``done`` line with the aggregated status."""
    row = await _readable(fanout_id, request, principal, services)
    _, commands = await services.db.read(
        fanout_store.list_results, row.id, state=None, limit=MAX_TARGETS, offset=0
    )

    async def status() -> dict[str, Any]:
        return fanout_json(row, await services.db.read(fanout_store.counts, row.id))

    return StreamingResponse(
        stream_fanout(services.db, services.hub.wakeups, commands, status),
        media_type="application/x-ndjson",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
