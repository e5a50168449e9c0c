"""``POST /api/events/fanouts/``: one command line to many servers (by list or label selector).

The create is all or nothing: an unknown, offline or un-gated target fails the whole
request, naming the servers, and nothing is stored but the gate's denial records. Every
targeted server gets its own command and its own grant (``gate_and_sign``), all inserted in
one transaction, then sent concurrently. The answer is the JSON array of the created
commands (as the family's create answers), each carrying the fan-out's id.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Annotated

import sqlalchemy
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetgate.controlplane.api.command_checks import CommandCreateBody, authorize_command
from fleetgate.controlplane.api.commands import COMMAND_SCOPE, SUDO_SCOPE
from fleetgate.controlplane.api.deps import PrincipalDep, Services, ServicesDep
from fleetgate.controlplane.api.serializers import command_json
from fleetgate.controlplane.authz import require_session_named
from fleetgate.controlplane.errors import APIError, invalid_request, validation_detail
from fleetgate.controlplane.grants import gate_and_sign
from fleetgate.controlplane.hub.delivery import send_many
from fleetgate.controlplane.ids import new_uuid
from fleetgate.controlplane.store import (
    commands as commands_store,
    fanouts as fanout_store,
    worksessions as sessions_store,
)
from fleetgate.controlplane.store.command_rows import CommandRow, NewCommand
from fleetgate.controlplane.store.fanouts import FanoutRow, Target
from fleetgate.controlplane.timeutil import now_us
from fleetgate.controlplane.worksession.gate import GateDenial
from fleetgate.shared.labels import LabelError, parse_selector
from fleetgate.shared.protocol import CommandRun, content_digest


__all__ = ["router"]

router = APIRouter(prefix="/api/events/fanouts")

log = structlog.get_logger("controlplane.fanouts")

MAX_TARGETS = 20_000
"""Servers one fan-out may name (the size of the largest fleet one process serves)."""
NAMED_IN_ERRORS = 20
"""Servers named in an error's detail; the rest are counted."""


class FanoutCreateBody(BaseModel):
    """``POST /api/events/fanouts/``: a command create with ``servers`` or ``selector``
    instead of ``server``."""

    model_config = ConfigDict(extra="ignore")
    servers: list[Annotated[str, Field(max_length=255)]] | None = Field(
        default=None, max_length=MAX_TARGETS
    )
    selector: str | None = Field(default=None, max_length=1000)
    line: str
    shell: str = "system"
    username: str | None = None
    groupname: str | None = None
    env: dict[str, str] | None = None
    timeout: float | None = None
    work_session: str | None = None
    sudo: bool = False
    scheduled_at: None = None
    """Fan-outs run now; a scheduled fan-out is not supported (must be absent or null)."""


def _names(refs: list[str]) -> str:
    shown = ", ".join(repr(ref[:100]) for ref in refs[:NAMED_IN_ERRORS])
    more = len(refs) - NAMED_IN_ERRORS
    return shown + (f" and {more} more" if more > 0 else "")


async def _targets(body: FanoutCreateBody, services: Services) -> list[Target]:
    """Resolve the targets; 400/404/503 naming the bad ones."""
    if (body.servers is None) == (body.selector is None):
        raise invalid_request("give exactly one of servers (ids or names) or selector", "servers")
    if body.selector is not None:
        try:
            selector = parse_selector(body.selector)
        except LabelError as exc:
            raise invalid_request(str(exc), "selector") from None
        targets = await services.db.read(fanout_store.select_by_labels, selector)
        if not targets:
            raise APIError(
                404,
                "SERVER_NOT_FOUND",
                f"No server matches the selector {str(selector)!r}.",
                "selector",
            )
    else:
        refs = [ref.strip() for ref in body.servers or []]
        if not refs or any(not ref for ref in refs):
            raise invalid_request("servers: give at least one server, no empty names", "servers")
        targets, missing = await services.db.read(fanout_store.resolve_refs, refs)
        if missing:
            raise APIError(
                404, "SERVER_NOT_FOUND", f"No server with id or name {_names(missing)}.", "servers"
            )
    offline = [t.name for t in targets if services.hub.connection(t.id) is None]
    if offline:
        raise APIError(
            503,
            "SERVER_NOT_CONNECTED",
            f"{len(offline)} of {len(targets)} servers are not connected: {_names(offline)}.",
            "servers",
        )
    return targets


@router.post("/", status_code=201)
async def create_fanout(
    body: FanoutCreateBody, request: Request, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """Create one command per targeted server, all or nothing; answer with them."""
    # The single-server create's own checks, so that both refuse the same fields.
    fields = body.model_dump(exclude={"servers", "selector", "scheduled_at"})
    try:
        single = CommandCreateBody.model_validate({**fields, "server": "-"})
    except ValidationError as exc:
        detail, source = validation_detail(exc.errors())
        raise APIError(400, "INVALID_COMMAND", detail, source) from None
    requested = body.work_session or request.headers.get("x-work-session") or None
    scope = SUDO_SCOPE if body.sudo else COMMAND_SCOPE
    # The same authorization as a single command: the account (a gated user's own), the
    # env denylist, the token's ACL.
    require_session_named(principal, requested, scope)
    run = authorize_command(single, principal, services.settings)
    started = time.perf_counter()
    targets = await _targets(body, services)
    resolved = time.perf_counter()
    now = now_us()
    user = principal.user
    fanout = FanoutRow(
        id=str(new_uuid()),
        line=run.line,
        target={"servers": body.servers} if body.selector is None else {"selector": body.selector},
        requested_by=principal.user_id,
        created_at=now,
        total=len(targets),
    )
    template = NewCommand(
        id="",
        server_id="",
        shell=run.shell,
        line=run.line,
        username=run.username,
        groupname=run.groupname or "",
        env=dict(run.env),
        timeout=run.timeout,
        requested_by=principal.user_id,
        added_at=now,
        scheduled_at=now,
        sudo=run.sudo,
    )

    runs: list[tuple[str, CommandRun]] = []
    content = content_digest(run)  # the same for every target: the id is not content

    def insert(conn: sqlalchemy.Connection) -> list[CommandRow] | list[tuple[Target, GateDenial]]:
        runs.clear()  # PostgreSQL may run the transaction again after a deadlock
        signed = []
        denials: list[tuple[Target, GateDenial]] = []
        for target in targets:
            command_id = str(new_uuid())
            outcome = gate_and_sign(
                conn,
                principal,
                services.signer,
                work_session=requested,
                server_id=target.id,
                server_name=target.name,
                scope=scope,
                operation_id=command_id,
                description=run.line,
                content=content,
                now=now,
            )
            if isinstance(outcome, GateDenial):
                denials.append((target, outcome))
            else:
                signed.append((target, command_id, outcome))
        if denials:
            return denials  # the denials are recorded; nothing else is stored
        rows: list[CommandRow] = []
        for target, command_id, outcome in signed:
            session = outcome.session
            cmd = replace(
                template,
                id=command_id,
                server_id=target.id,
                work_session_id=None if session is None else session.id,
                grant=outcome.grant.model_dump_json(),
            )
            row = commands_store.insert_command(
                conn,
                cmd,
                sent_at=now,
                server_name=target.name,
                requester_username=None if user is None else user.username,
                requester_email=None if user is None else user.email,
            )
            if session is not None:
                sessions_store.add_event(
                    conn,
                    session.id,
                    COMMAND_SCOPE,
                    timestamp=now,
                    actor=principal.user_id,
                    server_id=target.id,
                    command_id=row.id,
                )
            rows.append(row)
            # The frame to send, from the validated create and the grant in hand (no
            # second validation of what was just built).
            update = {"command_id": uuid.UUID(command_id), "grant": outcome.grant}
            runs.append((target.id, run.model_copy(update=update)))
        fanout_store.insert_fanout(conn, fanout, [row.id for row in rows])
        return rows

    try:
        outcome = await services.db.write(insert)
    except sqlalchemy.exc.IntegrityError:  # a server was deleted meanwhile
        services.server_refs.clear()
        raise APIError(
            404, "SERVER_NOT_FOUND", "A targeted server was deleted meanwhile.", "servers"
        ) from None
    if outcome and isinstance(outcome[0], tuple):
        denied = [pair for pair in outcome if isinstance(pair, tuple)]
        first = denied[0][1]
        raise APIError(
            403,
            first.code,
            f"Not allowed on {len(denied)} of {len(targets)} servers "
            f"({_names([t.name for t, _ in denied])}): {first.detail}",
            scope,
        )
    rows = [row for row in outcome if isinstance(row, CommandRow)]
    stored = time.perf_counter()
    stamp = now_us()
    # The answer is built before the sends: once they are out, 5,000 agents' reports
    # compete for this event loop.
    created = [{**command_json(row, now=stamp), "fanout": fanout.id} for row in rows]
    location = f"/api/events/fanouts/{fanout.id}/"
    response = JSONResponse(
        created, status_code=201, headers={"Location": location, "X-Fanout-Id": fanout.id}
    )
    answered = time.perf_counter()
    await send_many(services.hub.registry, runs, services.db, services.hub.wakeups.notify)
    log.info(
        "fanout.created",
        fanout_id=fanout.id,
        servers=len(rows),
        requested_by=principal.user_id,
        resolve_s=round(resolved - started, 3),
        store_s=round(stored - resolved, 3),
        answer_s=round(answered - stored, 3),
        send_s=round(time.perf_counter() - answered, 3),
    )
    return response
