"""Tunnels: who opened which forward to which server port, and how it ended.

A tunnel is a resource (``POST /api/tunnels/``); its TCP streams are channels and are
not stored. A closed tunnel keeps its row (``closed_at``, ``close_code``) for history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, RowMapping, Select, func, select, update

from fleetgate.controlplane.store import tables as t
from fleetgate.controlplane.store.owners import owned_by


__all__ = [
    "NewTunnel",
    "TunnelRow",
    "close_tunnel",
    "get_tunnel",
    "insert_tunnel",
    "list_tunnels",
    "open_tunnels_of",
]

_t = t.tunnels.c


def _select() -> Select[Any]:
    return select(
        t.tunnels, t.servers.c.name.label("server_name"), t.users.c.username.label("owner_name")
    ).select_from(
        t.tunnels.join(t.servers, t.servers.c.id == _t.server_id).outerjoin(
            t.users, t.users.c.id == _t.owner_user
        )
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
    def from_row(cls, row: RowMapping) -> TunnelRow:
        """Build from a row selected with ``_select()``."""
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


def insert_tunnel(conn: Connection, new: NewTunnel) -> None:
    """Store a new open tunnel."""
    conn.execute(
        t.tunnels.insert().values(
            id=new.id,
            server_id=new.server_id,
            remote_host=new.remote_host,
            remote_port=new.remote_port,
            owner_user=new.owner_user,
            owner_token=new.owner_token,
            work_session_id=new.work_session_id,
            created_at=new.created_at,
        )
    )


def get_tunnel(conn: Connection, tunnel_id: str) -> TunnelRow | None:
    """The tunnel ``tunnel_id``, or ``None``."""
    row = conn.execute(_select().where(_t.id == tunnel_id)).mappings().first()
    return None if row is None else TunnelRow.from_row(row)


def list_tunnels(
    conn: Connection,
    *,
    owner_user: int | None,
    owner_token: str | None,
    open_only: bool,
    offset: int,
    limit: int,
) -> tuple[int, list[TunnelRow]]:
    """A page of tunnels, newest first: of one owner (user, or token for services), or
    all of them when both are ``None``."""
    where = []
    if owner_user is not None:
        where.append(_t.owner_user == owner_user)
    elif owner_token is not None:
        where.append(_t.owner_token == owner_token)
    if open_only:
        where.append(_t.closed_at.is_(None))
    count = conn.execute(select(func.count()).select_from(t.tunnels).where(*where)).scalar_one()
    stmt = _select().where(*where).order_by(_t.created_at.desc(), _t.id).limit(limit).offset(offset)
    return int(count), [TunnelRow.from_row(r) for r in conn.execute(stmt).mappings()]


def close_tunnel(conn: Connection, tunnel_id: str, *, code: str, reason: str, now: int) -> bool:
    """Mark the tunnel closed; whether it was open."""
    cursor = conn.execute(
        update(t.tunnels)
        .where(_t.id == tunnel_id, _t.closed_at.is_(None))
        .values(closed_at=now, close_code=code, close_reason=reason)
    )
    return cursor.rowcount > 0


def open_tunnels_of(
    conn: Connection,
    *,
    token_id: str | None = None,
    user_id: int | None = None,
    work_session_id: str | None = None,
) -> list[TunnelRow]:
    """The tunnels still open that were created with ``token_id``, by ``user_id`` or under
    ``work_session_id`` (any of them; none given: none)."""
    owned = owned_by(t.tunnels, token_id=token_id, user_id=user_id, work_session_id=work_session_id)
    if owned is None:
        return []
    stmt = _select().where(_t.closed_at.is_(None), owned)
    return [TunnelRow.from_row(r) for r in conn.execute(stmt).mappings()]
