"""The work-session gate inside a transaction, and timeline reads."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, bindparam, func, select

from fleetgate.controlplane.store import tables as t
from fleetgate.controlplane.store.prepared import Prepared
from fleetgate.controlplane.store.worksessions import WorkSessionRow, add_event, load_settled
from fleetgate.controlplane.worksession.gate import GateDenial, SessionView, check_gate


__all__ = ["gate_and_record", "list_events"]


def gate_and_record(
    conn: Connection,
    requested: str | None,
    *,
    user_id: int | None,
    server_id: str,
    server_name: str,
    scope: str,
    line: str,
    now: int,
) -> tuple[GateDenial | None, WorkSessionRow | None]:
    """Check the gate inside the caller's transaction; record a denial on the session.

    Returns the denial (or ``None``) and the session. A denied attempt on a session
    assigned to the caller becomes a ``command`` timeline item with ``denied: true``.
    """
    row = None
    if requested:
        try:
            row = load_settled(conn, str(uuid.UUID(requested)), now=now)
        except ValueError:
            row = None
    view = None
    if row is not None:
        view = SessionView(row.id, row.status, row.assigned_user, row.server_ids, row.scopes)
    denial = check_gate(
        view,
        requested=requested,
        user_id=user_id,
        server_id=server_id,
        server_name=server_name,
        scope=scope,
    )
    if denial is not None and row is not None and row.assigned_user == user_id:
        add_event(
            conn,
            row.id,
            scope,
            timestamp=now,
            actor=user_id,
            server_id=server_id,
            data={"denied": True, "code": denial.code, "line": line},
        )
    return denial, row


def list_events(
    conn: Connection, session_id: str, *, offset: int, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """A page of a session's timeline, oldest first, with command details joined."""
    params = {"sid": session_id, "most": limit, "skip": offset}
    count = _EVENT_COUNT.first(conn, params)[0]
    return int(count), _EVENTS.mappings(conn, params)


# Every look at a timeline runs these (compiled once per dialect, see ``prepared``).
_ev, _cmd, _user = t.work_session_events.c, t.commands.c, t.users.c
_EVENT_COUNT = Prepared(
    select(func.count())
    .select_from(t.work_session_events)
    .where(_ev.session_id == bindparam("sid"))
)
_EVENTS = Prepared(
    select(
        t.work_session_events,
        _user.username.label("actor_name"),
        _cmd.line,
        _cmd.shell,
        _cmd.success,
        _cmd.exit_code,
        _cmd.elapsed_time,
        _cmd.sudo,
        _cmd.error_code,
        _cmd.error_phase,
        _cmd.requested_token,
    )
    .select_from(
        t.work_session_events.outerjoin(t.users, _user.id == _ev.actor).outerjoin(
            t.commands, _cmd.id == _ev.command_id
        )
    )
    .where(_ev.session_id == bindparam("sid"))
    .order_by(_ev.id)
    .limit(bindparam("most"))
    .offset(bindparam("skip"))
)
