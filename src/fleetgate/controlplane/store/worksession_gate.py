"""The work-session gate inside a transaction, and timeline reads."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

from fleetgate.controlplane.store.worksessions import WorkSessionRow, add_event, load_settled
from fleetgate.controlplane.worksession.gate import GateDenial, SessionView, check_gate


__all__ = ["gate_and_record", "list_events"]


def gate_and_record(
    conn: sqlite3.Connection,
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
    conn: sqlite3.Connection, session_id: str, *, offset: int, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """A page of a session's timeline, oldest first, with command details joined."""
    count = int(
        conn.execute(
            "SELECT COUNT(*) FROM work_session_events WHERE session_id = ?", (session_id,)
        ).fetchone()[0]
    )
    rows = conn.execute(
        "SELECT e.*, u.username AS actor_name, c.line, c.shell, c.success, c.exit_code, "
        "c.elapsed_time, c.sudo, c.error_code, c.error_phase, c.requested_token "
        "FROM work_session_events e LEFT JOIN users u ON u.id = e.actor "
        "LEFT JOIN commands c ON c.id = e.command_id WHERE e.session_id = ? "
        "ORDER BY e.id LIMIT ? OFFSET ?",
        (session_id, limit, offset),
    )
    return count, [dict(r) for r in rows]
