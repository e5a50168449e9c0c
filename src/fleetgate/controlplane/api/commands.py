"""``/api/events/commands/``: create, list, detail, chunks, stream, cancel."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from fleetgate.controlplane.api.deps import PrincipalDep, Services, ServicesDep, resolve_server
from fleetgate.controlplane.api.pagination import page_response
from fleetgate.controlplane.api.params import (
    parse_bool,
    parse_command_filter,
    parse_int,
    parse_page,
)
from fleetgate.controlplane.api.serializers import command_json
from fleetgate.controlplane.api.stream import ndjson_line, stream_command
from fleetgate.controlplane.auth import Principal, acl_allows
from fleetgate.controlplane.errors import (
    APIError,
    command_not_found,
    server_not_found,
    validation_detail,
)
from fleetgate.controlplane.grants import gate_and_sign
from fleetgate.controlplane.ids import new_uuid
from fleetgate.controlplane.store import (
    commands as commands_store,
    worksession_gate as ws_gate,
    worksessions as ws_store,
)
from fleetgate.controlplane.store.commands import CancelOutcome, CommandRow, NewCommand
from fleetgate.controlplane.timeutil import now_us, to_us
from fleetgate.controlplane.worksession.gate import GateDenial
from fleetgate.shared.protocol import CommandRun
from fleetgate.shared.sudo_patterns import SudoPatternError, parse_line


__all__ = ["router"]

router = APIRouter(prefix="/api/events/commands")

log = structlog.get_logger("controlplane.commands")

COMMAND_SCOPE = "command"
"""The work-session scope (and the gate's ``source``) of a command create."""
SUDO_SCOPE = "sudo"
"""The scope of an elevated command (``sudo: true``): run as root if a pattern matches."""


class CommandCreateBody(BaseModel):
    """``POST /api/events/commands/``; fields are checked again against ``CommandRun``."""

    model_config = ConfigDict(extra="ignore")
    server: str
    line: str
    shell: str = "system"
    username: str | None = None
    groupname: str | None = None
    env: dict[str, str] | None = None
    scheduled_at: datetime | None = None
    timeout: float | None = None
    work_session: str | None = None
    sudo: bool = False


def _invalid(detail: str, source: str | None) -> APIError:
    return APIError(400, "INVALID_COMMAND", detail, source)


def validate_command(body: CommandCreateBody) -> CommandRun:
    """Check a create against the wire model, so every stored command can be sent.

    Raises:
        APIError: 400 ``INVALID_COMMAND`` naming the field.
    """
    if not body.line.strip():
        raise _invalid("line: must not be empty", "line")
    if body.shell != "system":
        raise _invalid(f"shell: unknown shell {body.shell[:40]!r} (expected 'system')", "shell")
    if body.sudo:
        if (body.username or "root") != "root" or (body.groupname or "root") != "root":
            raise _invalid("sudo: an elevated command runs as root; omit username", "username")
        try:
            parse_line(body.line)
        except SudoPatternError as exc:
            raise _invalid(f"line: {exc}", "line") from None
    try:
        return CommandRun(  # noqa: S604 - "system" is the only shell; the agent runs it
            command_id=new_uuid(),
            shell="system",
            line=body.line,
            username=body.username or "root",
            groupname=body.groupname or None,
            env=body.env or {},
            timeout=body.timeout,
            sudo=body.sudo,
        )
    except ValidationError as exc:
        detail, source = validation_detail(exc.errors())
        raise _invalid(detail, source) from None


async def _visible_command(command_id: str, principal: Principal, services: Services) -> CommandRow:
    try:
        command_id = str(uuid.UUID(command_id))
    except ValueError:
        raise command_not_found() from None
    row = await services.db.read(commands_store.get_command, command_id)
    if row is None or not (principal.is_superuser or row.requested_by == principal.user_id):
        raise command_not_found()
    return row


async def _readable_command(
    command_id: str, request: Request, principal: Principal, services: Services
) -> CommandRow:
    """A command whose output the caller may read now.

    Reading a command's output ("exec logs") is a gated operation of the ``command`` scope
    for login principals, like running one: it needs an active work session (the
    ``X-Work-Session`` header or ``?work_session=``) on the command's server.
    """
    row = await _visible_command(command_id, principal, services)
    if principal.kind != "login":
        return row
    # An elevated command's output is read with the scope it was run with.
    scope = SUDO_SCOPE if row.sudo else COMMAND_SCOPE
    requested = request.query_params.get("work_session") or request.headers.get("x-work-session")
    now = now_us()

    def check(conn: sqlite3.Connection) -> GateDenial | None:
        denial, _ = ws_gate.gate_and_record(
            conn,
            requested or None,
            user_id=principal.user_id,
            server_id=row.server_id,
            server_name=row.server_name,
            scope=scope,
            line=f"exec logs {row.id}",
            now=now,
        )
        return denial

    denial = await services.db.write(check)
    if denial is not None:
        raise APIError(403, denial.code, denial.detail, scope)
    return row


@router.post("/", status_code=201, response_model=None)
async def create_command(
    body: CommandCreateBody, request: Request, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse | StreamingResponse:
    """Create a command; an immediate one is sent to the agent before this returns.

    With ``?stream=true`` the answer is the command's NDJSON stream: a ``created`` line
    with the command object, then its output and the ``finished`` line, so a client runs
    a command and reads its result in one request.
    """
    streaming = parse_bool(request.query_params, "stream") or False
    run = validate_command(body)
    if not acl_allows(principal.command_acl, run.line):
        raise APIError(
            403,
            "API_TOKEN_ACL_NOT_ALLOWED",
            "This token's command ACL does not allow this command line.",
            "line",
        )
    server_id, server_name = await resolve_server(services, body.server)
    now = now_us()
    scheduled_at = now if body.scheduled_at is None else to_us(body.scheduled_at)
    due = scheduled_at <= now
    conn = services.hub.connection(server_id)
    if due and conn is None:
        raise APIError(
            503, "SERVER_NOT_CONNECTED", f"Server {server_name!r} is not connected.", "server"
        )
    new = NewCommand(
        id=str(run.command_id),
        server_id=server_id,
        shell=run.shell,
        line=run.line,
        username=run.username,
        groupname=run.groupname or "",
        env=dict(run.env),
        timeout=run.timeout,
        requested_by=principal.user_id,
        requested_token=principal.token.id,
        added_at=now,
        scheduled_at=scheduled_at,
        sudo=run.sudo,
    )
    user = principal.user
    # Browser-style logins need an active work session; token authentication bypasses it.
    requested = body.work_session or request.headers.get("x-work-session") or None
    gated = principal.kind == "login"
    scope = SUDO_SCOPE if run.sudo else COMMAND_SCOPE
    if run.sudo and not gated:
        raise _invalid(
            "sudo: elevation is checked against a work session's sudo patterns; "
            "token principals run commands as root directly",
            "sudo",
        )

    def insert(conn: sqlite3.Connection) -> CommandRow | GateDenial:
        signed = gate_and_sign(
            conn,
            principal,
            services.signer,
            work_session=requested,
            server_id=server_id,
            server_name=server_name,
            scope=scope,
            operation_id=new.id,
            description=run.line,
            now=now,
        )
        if isinstance(signed, GateDenial):
            return signed
        session = signed.session
        cmd = replace(
            new,
            work_session_id=None if session is None else session.id,
            grant=signed.grant.model_dump_json(),
        )
        row = commands_store.insert_command(
            conn,
            cmd,
            sent_at=now if due else None,
            server_name=server_name,
            requester_username=None if user is None else user.username,
            requester_email=None if user is None else user.email,
        )
        if session is not None:
            ws_store.add_event(
                conn,
                session.id,
                COMMAND_SCOPE,
                timestamp=now,
                actor=principal.user_id,
                server_id=server_id,
                command_id=row.id,
            )
        return row

    try:
        outcome = await services.db.write(insert)
    except sqlite3.IntegrityError:  # the server was deleted meanwhile
        services.server_refs.clear()
        raise server_not_found(body.server) from None
    if isinstance(outcome, GateDenial):
        raise APIError(403, outcome.code, outcome.detail, scope)
    row = outcome
    log.info(
        "command_created",
        command_id=row.id,
        server_id=server_id,
        requested_by=principal.user_id,
        scheduled=not due,
    )
    if due:
        await services.hub.send_command(row)
    else:
        services.hub.scheduler.wake()
    created = command_json(row, now=now_us())
    if streaming:
        return _ndjson(
            _created_then(created, stream_command(services.db, services.hub.notifier, row.id)),
            status_code=201,
        )
    return JSONResponse(created, status_code=201)


@router.get("/")
async def list_commands(
    request: Request, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """A page of commands with the seed's filters and ordering."""
    params = request.query_params
    flt = parse_command_filter(params)
    page = parse_page(params)
    now = now_us()
    count, rows = await services.db.read(
        commands_store.list_commands,
        flt,
        now=now,
        visible_to=None if principal.is_superuser else principal.user_id,
        limit=page.size,
        offset=page.offset,
    )
    results = [command_json(r, now=now) for r in rows]
    return JSONResponse(page_response(request, services.settings.public_url, page, count, results))


@router.get("/{command_id}/")
async def get_command(
    command_id: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """One command."""
    row = await _readable_command(command_id, request, principal, services)
    return JSONResponse(command_json(row, now=now_us()))


@router.get("/{command_id}/chunks/")
async def list_chunks(
    command_id: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """A page of the command's output chunks, by ``seq``."""
    row = await _readable_command(command_id, request, principal, services)
    params = request.query_params
    seq_gte = parse_int(params, "seq__gte", minimum=0)
    seq_lte = parse_int(params, "seq__lte", minimum=0)
    page = parse_page(params)
    count, chunks = await services.db.read(
        commands_store.list_chunks,
        row.id,
        seq_gte=seq_gte,
        seq_lte=seq_lte,
        limit=page.size,
        offset=page.offset,
    )
    results = [{"seq": c.seq, "content": c.content} for c in chunks]
    return JSONResponse(page_response(request, services.settings.public_url, page, count, results))


@router.get("/{command_id}/stream/")
async def stream(
    command_id: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> StreamingResponse:
    """NDJSON: stored chunks from ``seq__gte``, live chunks, then the final command."""
    row = await _readable_command(command_id, request, principal, services)
    seq_gte = parse_int(request.query_params, "seq__gte", minimum=0) or 0
    lines: AsyncIterator[str] = stream_command(
        services.db, services.hub.notifier, row.id, seq_gte=seq_gte
    )
    return _ndjson(lines)


async def _created_then(created: dict[str, Any], lines: AsyncIterator[str]) -> AsyncIterator[str]:
    yield ndjson_line({"event": "created", "command": created})
    async for line in lines:
        yield line


def _ndjson(lines: AsyncIterator[str], status_code: int = 200) -> StreamingResponse:
    return StreamingResponse(
        lines,
        status_code=status_code,
        media_type="application/x-ndjson",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/{command_id}/cancel/")
async def cancel(command_id: str, principal: PrincipalDep, services: ServicesDep) -> JSONResponse:
    """Cancel a command that was not sent yet."""
    row = await _visible_command(command_id, principal, services)
    outcome = await services.db.write(commands_store.cancel_command, row.id, now=now_us())
    if outcome == CancelOutcome.NOT_FOUND:
        raise command_not_found()
    if outcome == CancelOutcome.ALREADY_SENT:
        raise APIError(
            409,
            "EVENT_COMMAND_ALREADY_SENT",
            "The command was already sent to the server; it cannot be cancelled.",
        )
    services.hub.notifier.notify([row.id])
    updated = await services.db.read(commands_store.get_command, row.id)
    if updated is None:
        raise command_not_found()
    return JSONResponse(command_json(updated, now=now_us()))
