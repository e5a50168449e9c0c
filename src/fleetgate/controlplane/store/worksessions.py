"""Work sessions and their timeline in SQLite.

Status changes go through :mod:`fleetgate.controlplane.worksession.lifecycle`; this module only
reads and writes rows. :func:`load_settled` persists the clock-driven moves (start,
expiry) that are due, with their timeline events, before anything else looks at a row.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, replace
from typing import Any

from fleetgate.controlplane.worksession.lifecycle import (
    Action,
    InvalidTransition,
    Status,
    next_due,
    settle,
    transition,
)


__all__ = [
    "NewWorkSession",
    "WorkSessionRow",
    "add_event",
    "adjust_request",
    "apply_action",
    "insert_work_session",
    "list_work_sessions",
    "load_settled",
    "next_due_at",
    "settle_all",
    "update_fields",
]

_SELECT = (
    "SELECT w.*, cu.username AS created_by_name, cu.email AS created_by_email, "
    "au.username AS assigned_name, au.email AS assigned_email FROM work_sessions w "
    "LEFT JOIN users cu ON cu.id = w.created_by LEFT JOIN users au ON au.id = w.assigned_user"
)


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
    def from_row(cls, row: sqlite3.Row) -> WorkSessionRow:
        """Build from a row selected with ``_SELECT``."""
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
    conn: sqlite3.Connection,
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
        "INSERT INTO work_session_events (session_id, type, timestamp, actor, server_id, "
        "command_id, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (session_id, type_, timestamp, actor, server_id, command_id, json.dumps(data or {})),
    )


def _status_event(
    conn: sqlite3.Connection,
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
    conn: sqlite3.Connection, new: NewWorkSession, *, auto_approve: bool, now: int
) -> WorkSessionRow:
    """Insert a pending session (approved at once with ``auto_approve``) and settle it."""
    conn.execute(
        "INSERT INTO work_sessions (id, description, status, requester_type, scopes, servers, "
        "sudo_policies, created_by, assigned_user, starts_at, expires_at, added_at, updated_at) "
        "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            new.id,
            new.description,
            new.requester_type,
            json.dumps(list(new.scopes)),
            json.dumps(list(new.server_ids)),
            json.dumps(list(new.sudo_policies)),
            new.created_by,
            new.assigned_user,
            new.starts_at,
            new.expires_at,
            now,
            now,
        ),
    )
    add_event(conn, new.id, "created", timestamp=now, actor=new.created_by)
    if auto_approve:
        apply_action(conn, new.id, Action.APPROVE, actor=new.created_by, now=now)
    row = load_settled(conn, new.id, now=now)
    assert row is not None
    return row


def _get(conn: sqlite3.Connection, session_id: str) -> WorkSessionRow | None:
    row = conn.execute(f"{_SELECT} WHERE w.id = ?", (session_id,)).fetchone()
    return None if row is None else WorkSessionRow.from_row(row)


def _set_status(
    conn: sqlite3.Connection, row: WorkSessionRow, new: Status, action: Action, *, at: int
) -> WorkSessionRow:
    started_at = at if new is Status.ACTIVE and row.started_at is None else row.started_at
    ended = new in (Status.COMPLETED, Status.EXPIRED, Status.REVOKED)
    completed_at = at if ended else row.completed_at
    conn.execute(
        "UPDATE work_sessions SET status = ?, started_at = ?, completed_at = ?, updated_at = ? "
        "WHERE id = ?",
        (new.value, started_at, completed_at, at, row.id),
    )
    return replace(row, status=new, started_at=started_at, completed_at=completed_at, updated_at=at)


def load_settled(conn: sqlite3.Connection, session_id: str, *, now: int) -> WorkSessionRow | None:
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
    conn: sqlite3.Connection, session_id: str, action: Action, *, actor: int | None, now: int
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
    conn: sqlite3.Connection,
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
        sets = ", ".join(f"{name} = ?" for name in columns)
        conn.execute(
            f"UPDATE work_sessions SET {sets}, updated_at = ? WHERE id = ?",  # noqa: S608
            (*columns.values(), now, row.id),
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
    conn: sqlite3.Connection,
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
            "UPDATE work_sessions SET scopes = ?, servers = ?, updated_at = ? WHERE id = ?",
            (json.dumps(list(row.scopes)), json.dumps(list(row.server_ids)), now, row.id),
        )
        add_event(conn, row.id, "adjust", timestamp=now, actor=actor, data=data)
    return row


def list_work_sessions(
    conn: sqlite3.Connection,
    *,
    visible_to: int | None,
    status: str | None,
    now: int,
    offset: int,
    limit: int,
    search: str | None = None,
) -> tuple[int, list[WorkSessionRow]]:
    """A page of sessions, newest first (``visible_to``: created by or assigned to).

    ``search`` matches (case-insensitively, as a substring) the purpose, the requester's
    or assignee's username, a server's name, or the start of the id.
    """
    settle_all(conn, now=now)
    where: list[str] = []
    params: list[object] = []
    if visible_to is not None:
        where.append("(w.created_by = ? OR w.assigned_user = ?)")
        params += [visible_to, visible_to]
    if status is not None:
        where.append("w.status = ?")
        params.append(status)
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append(
            "(w.description LIKE ? ESCAPE '\\' OR cu.username LIKE ? ESCAPE '\\' "
            "OR au.username LIKE ? ESCAPE '\\' OR w.id LIKE ? ESCAPE '\\' OR EXISTS ("
            "SELECT 1 FROM json_each(w.servers) j JOIN servers s ON s.id = j.value "
            "WHERE s.name LIKE ? ESCAPE '\\'))"
        )
        params += [pattern, pattern, pattern, pattern[1:], pattern]
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    joins = (
        " LEFT JOIN users cu ON cu.id = w.created_by LEFT JOIN users au ON au.id = w.assigned_user"
    )
    count_sql = f"SELECT COUNT(*) FROM work_sessions w{joins}{clause}"  # noqa: S608
    count = int(conn.execute(count_sql, params).fetchone()[0])
    rows = conn.execute(
        f"{_SELECT}{clause} ORDER BY w.added_at DESC, w.id LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )
    return count, [WorkSessionRow.from_row(r) for r in rows]


def settle_all(conn: sqlite3.Connection, *, now: int) -> list[WorkSessionRow]:
    """Persist every due start and expiry; return the sessions that changed."""
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM work_sessions WHERE status IN ('pending', 'approved', 'active') "
            "AND (expires_at <= ? OR (status = 'approved' AND starts_at <= ?))",
            (now, now),
        )
    ]
    changed = []
    for session_id in ids:
        row = load_settled(conn, session_id, now=now)
        if row is not None:
            changed.append(row)
    return changed


def next_due_at(conn: sqlite3.Connection) -> int | None:
    """The earliest time a live session starts or expires (``None``: none is live)."""
    times = [
        next_due(Status(r[0]), starts_at=r[1], expires_at=r[2])
        for r in conn.execute(
            "SELECT status, starts_at, expires_at FROM work_sessions "
            "WHERE status IN ('pending', 'approved', 'active')"
        )
    ]
    return min((t for t in times if t is not None), default=None)
