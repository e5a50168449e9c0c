"""Registered servers and the liveness columns the hub maintains."""

from __future__ import annotations

import hmac
import json
import sqlite3
import uuid
from dataclasses import dataclass, field

from fleetgate.controlplane.store.users import hash_key, new_key
from fleetgate.shared.labels import check_labels


__all__ = [
    "SERVER_KEY_PREFIX",
    "ServerRow",
    "authenticate",
    "delete_server",
    "get_server",
    "list_servers",
    "mark_connected",
    "mark_disconnected",
    "register_server",
    "reset_connections",
    "rotate_key",
    "touch",
    "update_labels",
]

SERVER_KEY_PREFIX = "fsk_"


@dataclass(frozen=True)
class ServerRow:
    """One server."""

    id: str
    name: str
    hostname: str
    platform: str
    agent_version: str | None
    is_connected: bool
    registered_at: int
    connected_at: int | None
    last_seen_at: int | None
    agent_labels: dict[str, str] = field(default_factory=dict)
    """Labels from the agent's configuration (its last ``hello``)."""
    operator_labels: dict[str, str] = field(default_factory=dict)
    """Labels set by superusers through the API; they win over the agent's."""

    @property
    def labels(self) -> dict[str, str]:
        """The effective labels: the agent's, overridden by the operators'."""
        return {**self.agent_labels, **self.operator_labels}

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ServerRow:
        """Build from a ``servers`` row."""
        return cls(
            id=str(row["id"]),
            name=str(row["name"]),
            hostname=str(row["hostname"]),
            platform=str(row["platform"]),
            agent_version=row["agent_version"],
            is_connected=bool(row["is_connected"]),
            registered_at=int(row["registered_at"]),
            connected_at=row["connected_at"],
            last_seen_at=row["last_seen_at"],
            agent_labels=json.loads(row["agent_labels"]),
            operator_labels=json.loads(row["labels"]),
        )


def register_server(
    conn: sqlite3.Connection, name: str, *, hostname: str = "", platform: str = "", now: int
) -> tuple[ServerRow, str] | None:
    """Register ``name``; return it and its key, or ``None`` when the name exists."""
    key = new_key(SERVER_KEY_PREFIX)
    try:
        cur = conn.execute(
            "INSERT INTO servers (id, name, key_hash, hostname, platform, registered_at) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
            (str(uuid.uuid4()), name, hash_key(key), hostname, platform, now),
        )
    except sqlite3.IntegrityError:
        return None
    return ServerRow.from_row(cur.fetchone()), key


def get_server(conn: sqlite3.Connection, ref: str) -> ServerRow | None:
    """The server whose id (a UUID) or else name is ``ref``."""
    row = None
    try:
        server_id = str(uuid.UUID(ref))
    except ValueError:
        pass
    else:
        row = conn.execute("SELECT * FROM servers WHERE id = ?", (server_id,)).fetchone()
    if row is None:
        row = conn.execute("SELECT * FROM servers WHERE name = ?", (ref,)).fetchone()
    return None if row is None else ServerRow.from_row(row)


def list_servers(
    conn: sqlite3.Connection,
    *,
    name: str | None,
    is_connected: bool | None,
    offset: int,
    limit: int,
) -> tuple[int, list[ServerRow]]:
    """A page of servers by name, and the total count matching the filters."""
    where: list[str] = []
    params: list[object] = []
    if name is not None:
        where.append("name = ?")
        params.append(name)
    if is_connected is not None:
        where.append("is_connected = ?")
        params.append(int(is_connected))
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    count = int(conn.execute(f"SELECT COUNT(*) FROM servers{clause}", params).fetchone()[0])  # noqa: S608
    rows = conn.execute(
        f"SELECT * FROM servers{clause} ORDER BY name LIMIT ? OFFSET ?",  # noqa: S608
        [*params, limit, offset],
    )
    return count, [ServerRow.from_row(r) for r in rows]


def rotate_key(conn: sqlite3.Connection, server_id: str) -> str:
    """Give a server a new key (the old one stops working); return it."""
    key = new_key(SERVER_KEY_PREFIX)
    conn.execute("UPDATE servers SET key_hash = ? WHERE id = ?", (hash_key(key), server_id))
    return key


def delete_server(conn: sqlite3.Connection, server_id: str) -> bool:
    """Delete a server (and, by cascade, its commands); whether it existed."""
    return conn.execute("DELETE FROM servers WHERE id = ?", (server_id,)).rowcount > 0


def authenticate(conn: sqlite3.Connection, server_id: str, key: str) -> ServerRow | None:
    """The server when ``key`` is its key (constant-time comparison of the digests)."""
    try:
        server_id = str(uuid.UUID(server_id))
    except ValueError:
        return None
    row = conn.execute("SELECT * FROM servers WHERE id = ?", (server_id,)).fetchone()
    if row is None or not hmac.compare_digest(str(row["key_hash"]), hash_key(key)):
        return None
    return ServerRow.from_row(row)


def mark_connected(
    conn: sqlite3.Connection,
    server_id: str,
    *,
    agent_version: str,
    hostname: str,
    connected_at: int,
    last_seen_at: int,
    labels: dict[str, str] | None = None,
) -> None:
    """Record an agent's ``hello`` on the connection that started at ``connected_at``;
    ``labels`` (from the agent's configuration) replace the agent's previous ones."""
    conn.execute(
        "UPDATE servers SET is_connected = 1, agent_version = ?, hostname = ?, "
        "connected_at = ?, last_seen_at = ?, agent_labels = ? WHERE id = ?",
        (
            agent_version,
            hostname,
            connected_at,
            last_seen_at,
            json.dumps(labels or {}, sort_keys=True),
            server_id,
        ),
    )


def update_labels(
    conn: sqlite3.Connection, server_id: str, changes: dict[str, str | None]
) -> dict[str, str] | None:
    """Merge ``changes`` into the operator labels (``None`` removes a key); return the
    new operator labels, or ``None`` when the server does not exist.

    Raises:
        LabelError: the result would have more than ``MAX_LABELS`` labels.
    """
    row = conn.execute("SELECT labels FROM servers WHERE id = ?", (server_id,)).fetchone()
    if row is None:
        return None
    labels: dict[str, str] = json.loads(row[0])
    for key, value in changes.items():
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
    check_labels(labels)  # LabelError (too many) rolls the transaction back
    conn.execute(
        "UPDATE servers SET labels = ? WHERE id = ?",
        (json.dumps(labels, sort_keys=True), server_id),
    )
    return labels


def mark_disconnected(
    conn: sqlite3.Connection, server_id: str, *, connected_at: int, last_seen_at: int
) -> None:
    """Record the end of the agent connection that started at ``connected_at``.

    A newer connection of the same server (another ``connected_at``) is left alone.
    """
    conn.execute(
        "UPDATE servers SET is_connected = 0, last_seen_at = ? WHERE id = ? AND connected_at = ?",
        (last_seen_at, server_id, connected_at),
    )


def touch(conn: sqlite3.Connection, server_id: str, *, last_seen_at: int) -> None:
    """Persist the time of the agent's last frame."""
    conn.execute("UPDATE servers SET last_seen_at = ? WHERE id = ?", (last_seen_at, server_id))


def reset_connections(conn: sqlite3.Connection) -> None:
    """At start: no agent is connected to a process that just started."""
    conn.execute("UPDATE servers SET is_connected = 0 WHERE is_connected = 1")
