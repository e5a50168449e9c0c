"""SSH access: the agents' host keys and the SSH connections opened through channels."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


__all__ = ["SshConnectionRow", "get_connection", "host_keys", "insert_connection", "set_host_key"]


@dataclass(frozen=True)
class SshConnectionRow:
    """One SSH connection (one ``ssh`` channel): who opened it, under which session."""

    id: str
    server_id: str
    username: str
    work_session_id: str | None
    owner_user: int | None
    owner_token: str
    created_at: int


def set_host_key(conn: sqlite3.Connection, server_id: str, key: str) -> None:
    """Remember the SSH host key the server's agent announced (``hello``, registration)."""
    conn.execute(
        "UPDATE servers SET ssh_host_key = ? WHERE id = ? AND ssh_host_key IS NOT ?",
        (key, server_id, key),
    )


def host_keys(conn: sqlite3.Connection, server_ids: list[str]) -> dict[str, str]:
    """``server id -> host key line`` of those of ``server_ids`` that announced one."""
    found: dict[str, str] = {}
    for start in range(0, len(server_ids), 500):
        chunk = server_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT id, ssh_host_key FROM servers WHERE id IN ({marks})"  # noqa: S608
            " AND ssh_host_key IS NOT NULL",
            chunk,
        )
        found.update({str(r[0]): str(r[1]) for r in rows})
    return found


def insert_connection(conn: sqlite3.Connection, row: SshConnectionRow) -> None:
    """Store a new SSH connection (its channel id is its id)."""
    conn.execute(
        "INSERT INTO ssh_connections (id, server_id, username, work_session_id, owner_user,"
        " owner_token, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            row.id,
            row.server_id,
            row.username,
            row.work_session_id,
            row.owner_user,
            row.owner_token,
            row.created_at,
        ),
    )


def get_connection(conn: sqlite3.Connection, connection_id: str) -> SshConnectionRow | None:
    """One SSH connection, or ``None``."""
    row = conn.execute("SELECT * FROM ssh_connections WHERE id = ?", (connection_id,)).fetchone()
    if row is None:
        return None
    return SshConnectionRow(**{name: row[name] for name in SshConnectionRow.__dataclass_fields__})
