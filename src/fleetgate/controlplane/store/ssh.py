"""SSH access: the agents' host keys and the SSH connections opened through channels."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select, update

from fleetgate.controlplane.store import tables as t
from fleetgate.controlplane.store.prepared import Prepared


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


def set_host_key(conn: Connection, server_id: str, key: str) -> None:
    """Remember the SSH host key the server's agent announced (``hello``, registration)."""
    _SET_HOST_KEY.run(conn, {"sid": server_id, "key": key})


# Every agent's hello with a host key runs it (compiled once per dialect, see ``prepared``).
_SET_HOST_KEY = Prepared(
    update(t.servers)
    .where(
        t.servers.c.id == bindparam("sid"),
        t.servers.c.ssh_host_key.is_distinct_from(bindparam("key")),
    )
    .values(ssh_host_key=bindparam("key"))
)


def host_keys(conn: Connection, server_ids: list[str]) -> dict[str, str]:
    """``server id -> host key line`` of those of ``server_ids`` that announced one."""
    found: dict[str, str] = {}
    for start in range(0, len(server_ids), 500):
        chunk = server_ids[start : start + 500]
        server = t.servers.c
        rows = conn.execute(
            select(server.id, server.ssh_host_key).where(
                server.id.in_(chunk), server.ssh_host_key.is_not(None)
            )
        )
        found.update({str(r[0]): str(r[1]) for r in rows})
    return found


def insert_connection(conn: Connection, row: SshConnectionRow) -> None:
    """Store a new SSH connection (its channel id is its id)."""
    conn.execute(
        t.ssh_connections.insert().values(
            id=row.id,
            server_id=row.server_id,
            username=row.username,
            work_session_id=row.work_session_id,
            owner_user=row.owner_user,
            owner_token=row.owner_token,
            created_at=row.created_at,
        )
    )


def get_connection(conn: Connection, connection_id: str) -> SshConnectionRow | None:
    """One SSH connection, or ``None``."""
    stmt = select(t.ssh_connections).where(t.ssh_connections.c.id == connection_id)
    row = conn.execute(stmt).mappings().first()
    if row is None:
        return None
    return SshConnectionRow(**{name: row[name] for name in SshConnectionRow.__dataclass_fields__})
