"""Terminal sessions (websh): who opened which shell where, and its recording.

A terminal row is created by ``POST /api/websh/terminals/`` (status ``created``), becomes
``open`` when the agent first attached a channel to it, and ``closed`` when its shell
ended or it was closed. Its recording arrives from the agent after the end.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Literal


__all__ = [
    "TerminalRow",
    "closed_unrecorded",
    "get_terminal",
    "insert_terminal",
    "list_terminals",
    "mark_attached",
    "mark_closed",
    "open_terminals_of",
    "set_recording",
]

TerminalStatus = Literal["created", "open", "closed"]


@dataclass(frozen=True)
class TerminalRow:
    """One terminal."""

    id: str
    server_id: str
    server_name: str
    username: str
    groupname: str | None
    shell: str | None
    rows: int
    cols: int
    work_session_id: str | None
    owner_user: int | None
    owner_token: str
    status: TerminalStatus
    channel_id: str | None
    attaches: int
    created_at: int
    closed_at: int | None
    close_reason: str | None
    recording_size: int | None
    recording_sha256: str | None
    recorded_at: int | None


_SELECT = """
SELECT t.*, s.name AS server_name FROM terminals t JOIN servers s ON s.id = t.server_id
"""


def _row(row: sqlite3.Row) -> TerminalRow:
    return TerminalRow(**{name: row[name] for name in TerminalRow.__dataclass_fields__})


def insert_terminal(
    conn: sqlite3.Connection,
    *,
    terminal_id: str,
    server_id: str,
    username: str,
    groupname: str | None,
    shell: str | None,
    rows: int,
    cols: int,
    work_session_id: str | None,
    owner_user: int | None,
    owner_token: str,
    now: int,
) -> None:
    """Store a new terminal (status ``created``)."""
    conn.execute(
        "INSERT INTO terminals (id, server_id, username, groupname, shell, rows, cols,"
        " work_session_id, owner_user, owner_token, status, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'created', ?)",
        (
            terminal_id,
            server_id,
            username,
            groupname,
            shell,
            rows,
            cols,
            work_session_id,
            owner_user,
            owner_token,
            now,
        ),
    )


def get_terminal(conn: sqlite3.Connection, terminal_id: str) -> TerminalRow | None:
    """One terminal, or None."""
    row = conn.execute(_SELECT + " WHERE t.id = ?", (terminal_id,)).fetchone()
    return None if row is None else _row(row)


def list_terminals(
    conn: sqlite3.Connection,
    *,
    owner_user: int | None = None,
    owner_token: str | None = None,
    work_session_id: str | None = None,
    server_id: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[TerminalRow], int]:
    """Terminals, newest first, with the total count; every given filter applies."""
    where, args = [], []
    for column, value in (
        ("t.owner_user", owner_user),
        ("t.owner_token", owner_token),
        ("t.work_session_id", work_session_id),
        ("t.server_id", server_id),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    # Only fixed column names are interpolated; every value is a parameter.
    count_sql = "SELECT COUNT(*) FROM terminals t" + clause  # noqa: S608
    total = conn.execute(count_sql, args).fetchone()[0]
    rows = conn.execute(
        _SELECT + clause + " ORDER BY t.created_at DESC, t.id LIMIT ? OFFSET ?",
        [*args, limit, offset],
    ).fetchall()
    return [_row(r) for r in rows], int(total)


def mark_attached(conn: sqlite3.Connection, terminal_id: str, channel_id: str) -> None:
    """A channel of the terminal is now relayed (the first one opens it)."""
    conn.execute(
        "UPDATE terminals SET status = CASE status WHEN 'created' THEN 'open' ELSE status END,"
        " channel_id = ?, attaches = attaches + 1 WHERE id = ?",
        (channel_id, terminal_id),
    )


def mark_closed(conn: sqlite3.Connection, terminal_id: str, *, reason: str, now: int) -> bool:
    """The terminal ended; False when it already had."""
    cursor = conn.execute(
        "UPDATE terminals SET status = 'closed', closed_at = ?, close_reason = ?"
        " WHERE id = ? AND status != 'closed'",
        (now, reason[:200], terminal_id),
    )
    return cursor.rowcount > 0


def open_terminals_of(
    conn: sqlite3.Connection,
    *,
    token_id: str | None = None,
    user_id: int | None = None,
    work_session_id: str | None = None,
) -> list[TerminalRow]:
    """The terminals not ended that were created with ``token_id``, by ``user_id`` or
    under ``work_session_id`` (any of them; ``NULL`` never matches)."""
    rows = conn.execute(
        _SELECT + " WHERE t.status != 'closed' AND (t.owner_token = ? OR t.owner_user = ?"
        " OR t.work_session_id = ?)",
        (token_id, user_id, work_session_id),
    ).fetchall()
    return [_row(r) for r in rows]


def closed_unrecorded(
    conn: sqlite3.Connection, server_id: str, *, since: int, limit: int = 1000
) -> list[tuple[str, str]]:
    """``(id, close_reason)`` of the terminals of ``server_id`` closed since ``since``
    whose recording has not arrived: their shell may still run on the agent."""
    rows = conn.execute(
        "SELECT id, COALESCE(close_reason, 'closed') FROM terminals WHERE server_id = ?"
        " AND status = 'closed' AND recorded_at IS NULL AND closed_at >= ?"
        " ORDER BY closed_at LIMIT ?",
        (server_id, since, limit),
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def set_recording(
    conn: sqlite3.Connection, terminal_id: str, *, size: int, sha256: str, now: int
) -> None:
    """The terminal's recording is stored (it arrives after the end)."""
    conn.execute(
        "UPDATE terminals SET recording_size = ?, recording_sha256 = ?, recorded_at = ?,"
        " status = 'closed', closed_at = COALESCE(closed_at, ?) WHERE id = ?",
        (size, sha256, now, now, terminal_id),
    )
