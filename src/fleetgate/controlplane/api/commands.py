"""``/api/events/commands/``: create, list, detail, chunks, stream, cancel."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Any

import sqlalchemy
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from fleetgate.controlplane.api.command_checks import CommandCreateBody, authorize_command
from fleetgate.controlplane.api.deps import PrincipalDep, Services, ServicesDep, resolve_server
from fleetgate.controlplane.api.ndjson import NdjsonResponse
from fleetgate.controlplane.api.pagination import page_response
from fleetgate.controlplane.api.params import (
    parse_bool,
    parse_command_filter,
    parse_int,
    parse_page,
)
from fleetgate.controlplane.api.serializers import command_json
from fleetgate.controlplane.api.stream import ndjson_line, stream_command
from fleetgate.controlplane.auth import Principal
from fleetgate.controlplane.authz import require_session_named
from fleetgate.controlplane.errors import (
    APIError,
    command_not_found,
    server_not_found,
)
from fleetgate.controlplane.grants import GrantSigner, gate_and_sign
from fleetgate.controlplane.store import (
    commands as commands_store,
    worksession_gate as session_gate,
    worksessions as sessions_store,
)
from fleetgate.controlplane.store.command_rows import CommandRow, NewCommand
from fleetgate.controlplane.store.commands import CancelOutcome
from fleetgate.controlplane.timeutil import now_us, to_us
from fleetgate.controlplane.worksession.gate import GateDenial
from fleetgate.shared.protocol import CommandRun, content_digest


__all__ = ["router"]

router = APIRouter(prefix="/api/events/commands")

log = structlog.get_logger("controlplane.commands")

COMMAND_SCOPE = "command"
"""The work-session scope (and the gate's ``source``) of a command create."""
SUDO_SCOPE = "sudo"
"""The scope of an elevated command (``sudo: true``): run as root if a pattern matches."""


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
    if not principal.gated:
        return row
    # An elevated command's output is read with the scope it was run with.
    scope = SUDO_SCOPE if row.sudo else COMMAND_SCOPE
    requested = request.query_params.get("work_session") or request.headers.get("x-work-session")
    now = now_us()

    def check(conn: sqlalchemy.Connection) -> GateDenial | None:
        denial, _ = session_gate.gate_and_record(
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
) -> JSONResponse | NdjsonResponse:
    """Create a command; an immediate one is sent to the agent before this returns.

    With ``?stream=true`` the answer is the command's NDJSON stream: a ``created`` line
    with the command object, then its output and the ``finished`` line, so a client runs
    a command and reads its result in one request.
    """
    streaming = parse_bool(request.query_params, "stream") or False
    requested = body.work_session or request.headers.get("x-work-session") or None
    scope = SUDO_SCOPE if body.sudo else COMMAND_SCOPE
    require_session_named(principal, requested, scope)
    run = authorize_command(body, principal, services.settings)
    server_id, server_name = await resolve_server(services, body.server)
    now = now_us()
    scheduled_at = now if body.scheduled_at is None else to_us(body.scheduled_at)
    due = scheduled_at <= now
    if due and services.hub.connection(server_id) is None:
        raise APIError(
            503, "SERVER_NOT_CONNECTED", f"Server {server_name!r} is not connected.", "server"
        )
    new = _new_command(run, principal, server_id, now=now, scheduled_at=scheduled_at)
    with contextlib.ExitStack() as stack:
        # A streaming create watches its command from before it is stored: every change
        # after that wakes its stream, which so needs no first look at the database.
        fresh = stack.enter_context(services.hub.wakeups.subscribe(new.id)) if streaming else None
        try:
            outcome = await services.db.write(
                _gate_sign_insert,
                new,
                principal,
                services.signer,
                requested=requested,
                server_name=server_name,
                scope=scope,
                sent_at=now if due else None,
                content=content_digest(run),
            )
        except sqlalchemy.exc.IntegrityError:  # the server was deleted meanwhile
            services.server_refs.clear()
            raise server_not_found(body.server) from None
        if isinstance(outcome, GateDenial):
            raise APIError(403, outcome.code, outcome.detail, scope)
        row = outcome
        log.info(
            "command.created",
            command_id=row.id,
            server_id=server_id,
            requested_by=principal.user_id,
            scheduled=not due,
        )
        await _deliver(services, row, due=due)
        created = command_json(row, now=now_us())
        if fresh is None:
            return JSONResponse(created, status_code=201)
        lines = stream_command(services.db, services.hub.wakeups, row.id, fresh=fresh)
        # The answer owns the subscription from here on and releases it when it ends.
        return NdjsonResponse(
            _created_then(created, lines), status_code=201, on_close=stack.pop_all().close
        )


def _new_command(
    run: CommandRun, principal: Principal, server_id: str, *, now: int, scheduled_at: int
) -> NewCommand:
    return NewCommand(
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


def _gate_sign_insert(
    conn: sqlalchemy.Connection,
    new: NewCommand,
    principal: Principal,
    signer: GrantSigner,
    *,
    requested: str | None,
    server_name: str,
    scope: str,
    sent_at: int | None,
    content: str,
) -> CommandRow | GateDenial:
    """Gate, sign and persist in one transaction: the command exists only if allowed,
    and its session's timeline links it. The grant binds ``content``, the digest of the
    ``command.run`` (``fleetgate.shared.protocol.content``)."""
    now = new.added_at
    signed = gate_and_sign(
        conn,
        principal,
        signer,
        work_session=requested,
        server_id=new.server_id,
        server_name=server_name,
        scope=scope,
        operation_id=new.id,
        description=new.line,
        content=content,
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
    user = principal.user
    row = commands_store.insert_command(
        conn,
        cmd,
        sent_at=sent_at,
        server_name=server_name,
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
            server_id=new.server_id,
            command_id=row.id,
        )
    return row


async def _deliver(services: Services, row: CommandRow, *, due: bool) -> None:
    """Send a due command now; wake the scheduler for a later one."""
    if due:
        await services.hub.send_command(row)
    else:
        services.hub.scheduler.wake()


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
) -> NdjsonResponse:
    """NDJSON: stored chunks from ``seq__gte``, live chunks, then the final command."""
    row = await _readable_command(command_id, request, principal, services)
    seq_gte = parse_int(request.query_params, "seq__gte", minimum=0) or 0
    return NdjsonResponse(
        stream_command(services.db, services.hub.wakeups, row.id, seq_gte=seq_gte)
    )


async def _created_then(
    created: dict[str, Any], lines: AsyncGenerator[str, None]
) -> AsyncGenerator[str, None]:
    try:
        yield ndjson_line({"event": "created", "command": created})
        async for line in lines:
            yield line
    finally:
        await lines.aclose()


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
    services.hub.wakeups.notify([row.id])
    if outcome == CancelOutcome.CANCELLED and row.env:
        await services.db.scrub()  # its env was erased
    updated = await services.db.read(commands_store.get_command, row.id)
    if updated is None:
        raise command_not_found()
    return JSONResponse(command_json(updated, now=now_us()))
