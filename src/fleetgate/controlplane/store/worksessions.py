"""Work sessions and their timeline.

Status changes go through :mod:`fleetgate.controlplane.worksession.lifecycle`; this module only
reads and writes rows. :func:`load_settled` persists the clock-driven moves (start,
expiry) that are due, with their timeline events, before anything else looks at a row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    bindparam,
    or_,
    select,
    text,
    update,
)

from fleetgate.controlplane.store import tables as t
from fleetgate.controlplane.store.prepared import Prepared
from fleetgate.controlplane.worksession.lifecycle import (
    Action,
    InvalidTransition,
    Status,
    next_due,
    settle,
    transition,
)


__all__ = [
    "ASSIGNEE",
    "CREATOR",
    "SESSION_FROM",
    "NewWorkSession",
    "WorkSessionRow",
    "add_event",
    "adjust_request",
    "apply_action",
    "insert_work_session",
    "load_settled",
    "next_due_at",
    "session_select",
    "settle_all",
    "update_fields",
]

_w = t.work_sessions.c
CREATOR = t.users.alias("cu")
"""The user who created a session (joined in :data:`SESSION_FROM`)."""
ASSIGNEE = t.users.alias("au")
"""The user a session is assigned to (joined in :data:`SESSION_FROM`)."""
SESSION_FROM = t.work_sessions.outerjoin(CREATOR, CREATOR.c.id == _w.created_by).outerjoin(
    ASSIGNEE, ASSIGNEE.c.id == _w.assigned_user
)
_LIVE = ("pending", "approved", "active")


def session_select() -> Select[Any]:
    """Every session column and its creator's and assignee's names and emails (what
    :meth:`WorkSessionRow.from_row` reads)."""
    return select(
        t.work_sessions,
        CREATOR.c.username.label("created_by_name"),
        CREATOR.c.email.label("created_by_email"),
        ASSIGNEE.c.username.label("assigned_name"),
        ASSIGNEE.c.email.label("assigned_email"),
    ).select_from(SESSION_FROM)


@dataclass(frozen=True)
class NewWorkSession:
    """A validated create."""

    id: str
    description: str
    requester_type: str
    scopes: tuple[str, ...]
    server_ids: tuple[str, ...]
    sudo_policies: tuple[dict[str, Any], ...]
    created_by: int | None
    assigned_user: int
    starts_at: int
    expires_at: int


@dataclass(frozen=True)
class WorkSessionRow:
    """One work session with the names of its creator and assignee."""

    id: str
    description: str
    status: Status
    requester_type: str
    scopes: tuple[str, ...]
    server_ids: tuple[str, ...]
    sudo_policies: tuple[dict[str, Any], ...]
    created_by: int | None
    created_by_name: str | None
    created_by_email: str | None
    assigned_user: int | None
    assigned_name: str | None
    assigned_email: str | None
    starts_at: int
    expires_at: int
    started_at: int | None
    completed_at: int | None
    added_at: int
    updated_at: int

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> WorkSessionRow:
        """Build from a row selected with ``session_select()``."""
        return cls(
            id=row["id"],
            description=row["description"],
            status=Status(row["status"]),
            requester_type=row["requester_type"],
            scopes=tuple(json.loads(row["scopes"])),
            server_ids=tuple(json.loads(row["servers"])),
            sudo_policies=tuple(json.loads(row["sudo_policies"])),
            created_by=row["created_by"],
            created_by_name=row["created_by_name"],
            created_by_email=row["created_by_email"],
            assigned_user=row["assigned_user"],
            assigned_name=row["assigned_name"],
            assigned_email=row["assigned_email"],
            starts_at=row["starts_at"],
            expires_at=row["expires_at"],
            started_at=row["started_at"],
            completed_at=row["completed_at"],
            added_at=row["added_at"],
            updated_at=row["updated_at"],
        )


def add_event(
    conn: Connection,
    session_id: str,
    type_: str,
    *,
    timestamp: int,
    actor: int | None = None,
    server_id: str | None = None,
    command_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Append one timeline item."""
    conn.execute(
        t.work_session_events.insert().values(
            session_id=session_id,
            type=type_,
            timestamp=timestamp,
            actor=actor,
            server_id=server_id,
            command_id=command_id,
            data=json.dumps(data or {}),
        )
    )


def _status_event(
    conn: Connection,
    session_id: str,
    old: Status,
    new: Status,
    action: Action,
    *,
    at: int,
    actor: int | None,
) -> None:
    add_event(
        conn,
        session_id,
        "status_change",
        timestamp=at,
        actor=actor,
        data={"action": action.value, "from": old.value, "to": new.value},
    )


def insert_work_session(
    conn: Connection, new: NewWorkSession, *, auto_approve: bool, now: int
) -> WorkSessionRow:
    """Insert a pending session (approved at once with ``auto_approve``) and settle it."""
    conn.execute(
        t.work_sessions.insert().values(
            id=new.id,
            description=new.description,
            status="pending",
            requester_type=new.requester_type,
            scopes=json.dumps(list(new.scopes)),
            servers=json.dumps(list(new.server_ids)),
            sudo_policies=json.dumps(list(new.sudo_policies)),
            created_by=new.created_by,
            assigned_user=new.assigned_user,
            starts_at=new.starts_at,
            expires_at=new.expires_at,
            added_at=now,
            updated_at=now,
        )
    )
    add_event(conn, new.id, "created", timestamp=now, actor=new.created_by)
    if auto_approve:
        apply_action(conn, new.id, Action.APPROVE, actor=new.created_by, now=now)
    row = load_settled(conn, new.id, now=now)
    assert row is not None
    return row


def _get(conn: Connection, session_id: str) -> WorkSessionRow | None:
    row = _GET.mapping(conn, {"sid": session_id})
    return None if row is None else WorkSessionRow.from_row(row)


def _set_status(
    conn: Connection, row: WorkSessionRow, new: Status, action: Action, *, at: int
) -> WorkSessionRow:
    started_at = at if new is Status.ACTIVE and row.started_at is None else row.started_at
    ended = new in (Status.COMPLETED, Status.EXPIRED, Status.REVOKED)
    completed_at = at if ended else row.completed_at
    _SET_STATUS.run(
        conn,
        {
            "sid": row.id,
            "status": new.value,
            "started_at": started_at,
            "completed_at": completed_at,
            "at": at,
        },
    )
    return replace(row, status=new, started_at=started_at, completed_at=completed_at, updated_at=at)


def load_settled(conn: Connection, session_id: str, *, now: int) -> WorkSessionRow | None:
    """The session after persisting its due start or expiry (with timeline events)."""
    row = _get(conn, session_id)
    if row is None:
        return None
    settled = settle(row.status, starts_at=row.starts_at, expires_at=row.expires_at, now=now)
    old = row.status
    for action, new, at in settled.moves:
        row = _set_status(conn, row, new, action, at=at)
        _status_event(conn, row.id, old, new, action, at=at, actor=None)
        old = new
    return row


def apply_action(
    conn: Connection, session_id: str, action: Action, *, actor: int | None, now: int
) -> WorkSessionRow | None:
    """Settle the session, then apply ``action`` (raises ``InvalidTransition``)."""
    row = load_settled(conn, session_id, now=now)
    if row is None:
        return None
    new = transition(row.status, action)
    if new is row.status:
        return row
    old = row.status
    _set_status(conn, row, new, action, at=now)
    _status_event(conn, row.id, old, new, action, at=now, actor=actor)
    # An approved session whose start time has come is active at once.
    return load_settled(conn, row.id, now=now)


def update_fields(
    conn: Connection,
    session_id: str,
    action: Action,
    *,
    actor: int | None,
    now: int,
    event: str,
    expires_at: int | None = None,
    sudo_policies: list[dict[str, Any]] | None = None,
    scopes: tuple[str, ...] | None = None,
    server_ids: tuple[str, ...] | None = None,
) -> WorkSessionRow | None:
    """Change a live session's fields under ``action`` (``extend``/``update`` keep the
    status, ``amend`` sends it back to pending) and record ``event`` on the timeline with
    who changed what, before and after."""
    row = apply_action(conn, session_id, action, actor=actor, now=now)
    if row is None:
        return None
    changes: dict[str, Any] = {}
    columns: dict[str, Any] = {}
    if expires_at is not None:
        changes["expires_at"] = {"before": row.expires_at, "after": expires_at}
        columns["expires_at"] = expires_at
        row = replace(row, expires_at=expires_at)
    if sudo_policies is not None:
        before = list(row.sudo_policies)
        changes["sudo_policies"] = {"before": before, "after": sudo_policies}
        columns["sudo_policies"] = json.dumps(sudo_policies)
        row = replace(row, sudo_policies=tuple(sudo_policies))
    if scopes is not None:
        changes["scopes"] = {"before": list(row.scopes), "after": list(scopes)}
        columns["scopes"] = json.dumps(list(scopes))
        row = replace(row, scopes=scopes)
    if server_ids is not None:
        changes["servers"] = {"before": list(row.server_ids), "after": list(server_ids)}
        columns["servers"] = json.dumps(list(server_ids))
        row = replace(row, server_ids=server_ids)
    if columns:
        conn.execute(
            update(t.work_sessions).where(_w.id == row.id).values(**columns, updated_at=now)
        )
        row = replace(row, updated_at=now)
    data: dict[str, Any] = {"changes": changes, "status": row.status.value}
    # Kept for readers of the older event shapes.
    if expires_at is not None:
        data.update({"from": changes["expires_at"]["before"], "to": expires_at})
    if sudo_policies is not None:
        data["sudo_policies"] = sudo_policies
    add_event(conn, row.id, event, timestamp=now, actor=actor, data=data)
    return row


def adjust_request(
    conn: Connection,
    session_id: str,
    *,
    scopes: tuple[str, ...] | None,
    server_ids: tuple[str, ...] | None,
    actor: int | None,
    now: int,
) -> WorkSessionRow | None:
    """Narrow a pending request's scopes and servers before it is approved.

    Records an ``adjust`` item with what changed. Raises ``InvalidTransition`` (for
    ``approve``) unless the session is still pending.
    """
    row = load_settled(conn, session_id, now=now)
    if row is None:
        return None
    if row.status is not Status.PENDING:
        raise InvalidTransition(row.status, Action.APPROVE)
    data: dict[str, Any] = {}
    if scopes is not None and scopes != row.scopes:
        data["scopes"] = {"from": list(row.scopes), "to": list(scopes)}
        row = replace(row, scopes=scopes)
    if server_ids is not None and server_ids != row.server_ids:
        data["servers"] = {"from": list(row.server_ids), "to": list(server_ids)}
        row = replace(row, server_ids=server_ids)
    if data:
        conn.execute(
            update(t.work_sessions)
            .where(_w.id == row.id)
            .values(
                scopes=json.dumps(list(row.scopes)),
                servers=json.dumps(list(row.server_ids)),
                updated_at=now,
            )
        )
        add_event(conn, row.id, "adjust", timestamp=now, actor=actor, data=data)
    return row


def settle_all(conn: Connection, *, now: int) -> list[WorkSessionRow]:
    """Persist every due start and expiry; return the sessions that changed."""
    ids = [row[0] for row in _DUE.rows(conn, {"now": now})]
    changed = []
    for session_id in ids:
        row = load_settled(conn, session_id, now=now)
        if row is not None:
            changed.append(row)
    return changed


def next_due_at(conn: Connection) -> int | None:
    """The earliest time a live session starts or expires (``None``: none is live)."""
    times = [
        next_due(Status(r[0]), starts_at=r[1], expires_at=r[2]) for r in _LIVE_TIMES.rows(conn)
    ]
    return min((t for t in times if t is not None), default=None)


# Every look at a session runs these (compiled once per dialect, see ``prepared``).
_GET = Prepared(
    session_select()
    .where(_w.id == bindparam("sid"))
    # The session's row is locked until the transaction ends (PostgreSQL; SQLite's write
    # transactions are serialized already): its status moves are read-then-write.
    .with_for_update(of=t.work_sessions)
)
_SET_STATUS = Prepared(
    update(t.work_sessions)
    .where(_w.id == bindparam("sid"))
    .values(
        status=bindparam("status"),
        started_at=bindparam("started_at"),
        completed_at=bindparam("completed_at"),
        updated_at=bindparam("at"),
    )
)
# Spelled out (no IN list parameter, which a prepared statement cannot take): it is also
# the condition of the partial index ix_work_sessions_live, which the planners then use.
_LIVE_STATUS = text("work_sessions.status IN ('pending', 'approved', 'active')")
_DUE = Prepared(
    select(_w.id).where(
        _LIVE_STATUS,
        or_(
            _w.expires_at <= bindparam("now"),
            (_w.status == "approved") & (_w.starts_at <= bindparam("now")),
        ),
    )
)
_LIVE_TIMES = Prepared(select(_w.status, _w.starts_at, _w.expires_at).where(_LIVE_STATUS))
