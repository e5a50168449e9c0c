"""Work sessions and their timeline: the rows, the create, and the status moves.

Status changes go through :mod:`fleetgate.controlplane.worksession.lifecycle`; this module only
reads and writes rows. :func:`load_settled` persists the clock-driven moves (start,
expiry) that are due, with their timeline events, before anything else looks at a row.
Changes to a session's fields are in :mod:`.worksession_fields`, the sweep of every due
move in :mod:`.worksession_due`.
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
    select,
    update,
)

from fleetgate.controlplane.store import tables as t
from fleetgate.controlplane.store.prepared import Prepared
from fleetgate.controlplane.worksession.lifecycle import (
    Action,
    Status,
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
    "apply_action",
    "insert_work_session",
    "load_settled",
    "session_select",
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
