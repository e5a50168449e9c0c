"""Registered servers and the liveness columns the hub maintains."""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select, update

from fleetgate.controlplane.store import tables as t
from fleetgate.controlplane.store.prepared import IN_LIST_MAX, Prepared, PreparedIn
from fleetgate.controlplane.store.sql import insert_ignore
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
    "names",
    "register_server",
    "reset_connections",
    "rotate_key",
    "summaries",
    "touch",
    "update_labels",
]

SERVER_KEY_PREFIX = "fsk_"

_c = t.servers.c

# Every agent's connection runs these (compiled once per dialect, see ``prepared``).
_BY_ID = Prepared(select(t.servers).where(_c.id == bindparam("sid")))
_SUMMARIES = PreparedIn(lambda ids: select(_c.id, _c.name, _c.is_connected).where(_c.id.in_(ids)))
_BY_NAME = Prepared(select(t.servers).where(_c.name == bindparam("name")))
_CONNECTED = Prepared(
    update(t.servers)
    .where(_c.id == bindparam("sid"))
    .values(
        is_connected=1,
        agent_version=bindparam("version"),
        hostname=bindparam("hostname"),
        connected_at=bindparam("connected_at"),
        last_seen_at=bindparam("seen"),
        agent_labels=bindparam("labels"),
    )
)
_DISCONNECTED = Prepared(
    update(t.servers)
    .where(_c.id == bindparam("sid"), _c.connected_at == bindparam("connected_at"))
    .values(is_connected=0, last_seen_at=bindparam("seen"))
)
_TOUCH = Prepared(
    update(t.servers).where(_c.id == bindparam("sid")).values(last_seen_at=bindparam("seen"))
)


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
    def from_row(cls, row: Mapping[Any, Any]) -> ServerRow:
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
    conn: Connection, name: str, *, hostname: str = "", platform: str = "", now: int
) -> tuple[ServerRow, str] | None:
    """Register ``name``; return it and its key, or ``None`` when the name exists."""
    key = new_key(SERVER_KEY_PREFIX)
    stmt = (
        insert_ignore(conn, t.servers)
        .values(
            id=str(uuid.uuid4()),
            name=name,
            key_hash=hash_key(key),
            hostname=hostname,
            platform=platform,
            registered_at=now,
        )
        .returning(*t.servers.c)
    )
    row = conn.execute(stmt).mappings().first()
    return None if row is None else (ServerRow.from_row(row), key)


def get_server(conn: Connection, ref: str) -> ServerRow | None:
    """The server whose id (a UUID) or else name is ``ref``."""
    row = None
    try:
        server_id = str(uuid.UUID(ref))
    except ValueError:
        pass
    else:
        row = _BY_ID.mapping(conn, {"sid": server_id})
    if row is None:
        row = _BY_NAME.mapping(conn, {"name": ref})
    return None if row is None else ServerRow.from_row(row)


def summaries(conn: Connection, ids: Iterable[str]) -> dict[str, tuple[str, bool]]:
    """``server id -> (name, is_connected)`` of those of ``ids`` that exist (one query
    per 512): a page of sessions names its servers with one call, not one per server."""
    out: dict[str, tuple[str, bool]] = {}
    pending = sorted(set(ids))
    for start in range(0, len(pending), IN_LIST_MAX):
        rows = _SUMMARIES.rows(conn, pending[start : start + IN_LIST_MAX])
        out.update({str(sid): (str(name), bool(connected)) for sid, name, connected in rows})
    return out


def list_servers(
    conn: Connection,
    *,
    name: str | None,
    is_connected: bool | None,
    offset: int,
    limit: int,
) -> tuple[int, list[ServerRow]]:
    """A page of servers by name, and the total count matching the filters."""
    count_stmt, page = _LISTINGS[(name is not None, is_connected is not None)]
    params = {
        "name": name,
        "connected": None if is_connected is None else int(is_connected),
        "most": limit,
        "skip": offset,
    }
    count = count_stmt.first(conn, params)[0]
    return int(count), [ServerRow.from_row(r) for r in page.mappings(conn, params)]


def _listing(by_name: bool, by_connected: bool) -> tuple[Prepared, Prepared]:
    where = []
    if by_name:
        where.append(_c.name == bindparam("name"))
    if by_connected:
        where.append(_c.is_connected == bindparam("connected"))
    page = (
        select(t.servers)
        .where(*where)
        .order_by(_c.name)
        .limit(bindparam("most"))
        .offset(bindparam("skip"))
    )
    return Prepared(select(func.count()).select_from(t.servers).where(*where)), Prepared(page)


# The list's statements, built once per filter set (see ``prepared``).
_LISTINGS = {(n, c): _listing(n, c) for n in (False, True) for c in (False, True)}


def rotate_key(conn: Connection, server_id: str) -> str:
    """Give a server a new key (the old one stops working); return it."""
    key = new_key(SERVER_KEY_PREFIX)
    conn.execute(update(t.servers).where(_c.id == server_id).values(key_hash=hash_key(key)))
    return key


def delete_server(conn: Connection, server_id: str) -> bool:
    """Delete a server (and, by cascade, its commands); whether it existed."""
    return conn.execute(delete(t.servers).where(_c.id == server_id)).rowcount > 0


def authenticate(conn: Connection, server_id: str, key: str) -> ServerRow | None:
    """The server when ``key`` is its key (constant-time comparison of the digests)."""
    try:
        server_id = str(uuid.UUID(server_id))
    except ValueError:
        return None
    row = _BY_ID.mapping(conn, {"sid": server_id})
    if row is None or not hmac.compare_digest(str(row["key_hash"]), hash_key(key)):
        return None
    return ServerRow.from_row(row)


def mark_connected(
    conn: Connection,
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
    _CONNECTED.run(
        conn,
        {
            "sid": server_id,
            "version": agent_version,
            "hostname": hostname,
            "connected_at": connected_at,
            "seen": last_seen_at,
            "labels": json.dumps(labels or {}, sort_keys=True),
        },
    )


def update_labels(
    conn: Connection, server_id: str, changes: dict[str, str | None]
) -> dict[str, str] | None:
    """Merge ``changes`` into the operator labels (``None`` removes a key); return the
    new operator labels, or ``None`` when the server does not exist.

    Raises:
        LabelError: the result would have more than ``MAX_LABELS`` labels.
    """
    # Locked (PostgreSQL): two concurrent merges must not both start from the same labels.
    stmt = select(_c.labels).where(_c.id == server_id).with_for_update()
    current = conn.execute(stmt).scalar_one_or_none()
    if current is None:
        return None
    labels: dict[str, str] = json.loads(current)
    for key, value in changes.items():
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
    check_labels(labels)  # LabelError (too many) rolls the transaction back
    conn.execute(
        update(t.servers)
        .where(_c.id == server_id)
        .values(labels=json.dumps(labels, sort_keys=True))
    )
    return labels


def mark_disconnected(
    conn: Connection, server_id: str, *, connected_at: int, last_seen_at: int
) -> None:
    """Record the end of the agent connection that started at ``connected_at``.

    A newer connection of the same server (another ``connected_at``) is left alone.
    """
    _DISCONNECTED.run(conn, {"sid": server_id, "connected_at": connected_at, "seen": last_seen_at})


def touch(conn: Connection, server_id: str, *, last_seen_at: int) -> None:
    """Persist the time of the agent's last frame."""
    _TOUCH.run(conn, {"sid": server_id, "seen": last_seen_at})


def reset_connections(conn: Connection) -> None:
    """At start: no agent is connected to a process that just started."""
    conn.execute(update(t.servers).where(_c.is_connected == 1).values(is_connected=0))


def names(conn: Connection, ids: list[str]) -> dict[str, str]:
    """``server id -> name`` of those of ``ids`` that exist (one query per 500)."""
    out: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = conn.execute(select(_c.id, _c.name).where(_c.id.in_(chunk)))
        out.update({str(server_id): str(name) for server_id, name in rows})
    return out
