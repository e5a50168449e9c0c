"""Tunnels in SQLite: who opened which forward to which server port, and how it ended.

A tunnel is a resource (``POST /api/tunnels/``); its TCP streams are channels and are
not stored. A closed tunnel keeps its row (``closed_at``, ``close_code``) for history.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


__all__ = [
    "NewTunnel",
    "TunnelRow",
    "close_tunnel",
    "get_tunnel",
    "insert_tunnel",
    "list_tunnels",
    "open_tunnels_of",
]

_SELECT = (
    "SELECT t.*, s.name AS server_name, u.username AS owner_name FROM tunnels t "
    "JOIN servers s ON s.id = t.server_id LEFT JOIN users u ON u.id = t.owner_user"
)


@dataclass(frozen=True)
class NewTunnel:
    """A validated create."""

    id: str
    server_id: str
    remote_host: str
    remote_port: int
    owner_user: int | None
    owner_token: str
    work_session_id: str | None
    created_at: int


@dataclass(frozen=True)
class TunnelRow:
    """One tunnel with its server's and owner's names."""

    id: str
    server_id: str
    server_name: str
    remote_host: str
    remote_port: int
    owner_user: int | None
    owner_name: str | None
    owner_token: str
    work_session_id: str | None
    created_at: int
    closed_at: int | None
    close_code: str | None
    close_reason: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> TunnelRow:
        """Build from a row selected with ``_SELECT``."""
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


def insert_tunnel(conn: sqlite3.Connection, new: NewTunnel) -> None:
    """Store a new open tunnel."""
    conn.execute(
        "INSERT INTO tunnels (id, server_id, remote_host, remote_port, owner_user, "
        "owner_token, work_session_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            new.id,
            new.server_id,
            new.remote_host,
            new.remote_port,
            new.owner_user,
            new.owner_token,
            new.work_session_id,
            new.created_at,
        ),
    )


def get_tunnel(conn: sqlite3.Connection, tunnel_id: str) -> TunnelRow | None:
    """The tunnel ``tunnel_id``, or ``None``."""
    row = conn.execute(f"{_SELECT} WHERE t.id = ?", (tunnel_id,)).fetchone()
    return None if row is None else TunnelRow.from_row(row)


def list_tunnels(
    conn: sqlite3.Connection,
    *,
    owner_user: int | None,
    owner_token: str | None,
    open_only: bool,
    offset: int,
    limit: int,
) -> tuple[int, list[TunnelRow]]:
    """A page of tunnels, newest first: of one owner (user, or token for services), or
    all of them when both are ``None``."""
    where: list[str] = []
    params: list[object] = []
    if owner_user is not None:
        where.append("t.owner_user = ?")
        params.append(owner_user)
    elif owner_token is not None:
        where.append("t.owner_token = ?")
        params.append(owner_token)
    if open_only:
        where.append("t.closed_at IS NULL")
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    # ``clause`` is built from the fixed fragments above; values are parameters.
    count_sql = f"SELECT COUNT(*) FROM tunnels t{clause}"  # noqa: S608
    count = int(conn.execute(count_sql, params).fetchone()[0])
    rows = conn.execute(
        f"{_SELECT}{clause} ORDER BY t.created_at DESC, t.id LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )
    return count, [TunnelRow.from_row(r) for r in rows]


def close_tunnel(
    conn: sqlite3.Connection, tunnel_id: str, *, code: str, reason: str, now: int
) -> bool:
    """Mark the tunnel closed; whether it was open."""
    cursor = conn.execute(
        "UPDATE tunnels SET closed_at = ?, close_code = ?, close_reason = ? "
        "WHERE id = ? AND closed_at IS NULL",
        (now, code, reason, tunnel_id),
    )
    return cursor.rowcount > 0


def open_tunnels_of(
    conn: sqlite3.Connection,
    *,
    token_id: str | None = None,
    user_id: int | None = None,
    work_session_id: str | None = None,
) -> list[TunnelRow]:
    """The tunnels still open that were created with ``token_id``, by ``user_id`` or under
    ``work_session_id`` (any of them; none given: none)."""
    rows = conn.execute(
        f"{_SELECT} WHERE t.closed_at IS NULL AND (t.owner_token = ? OR t.owner_user = ? "
        "OR t.work_session_id = ?)",
        (token_id, user_id, work_session_id),
    )
    return [TunnelRow.from_row(r) for r in rows]
