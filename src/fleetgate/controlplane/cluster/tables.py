"""The replicas' own tables in the shared PostgreSQL database, and their queries.

``cluster_replicas``
    one row per running replica: where the others reach it (``internal_url``) and its
    heartbeat. A replica whose heartbeat is older than the liveness window is dead.
``cluster_links``
    which replica holds each agent's backhaul, with what the others show of the link
    (hostname, features, frame limit).
``cluster_frames``
    frames for the agents linked to one replica (``replica_id``), and messages for the
    replica waiting for a channel or for all (``target`` ``*``), named by notes. Claimed
    with ``DELETE ... RETURNING``: exactly one replica sends a frame.
``cluster_channels``
    which replica waits for the agent's side of each channel being opened.
``cluster_secret``
    one random key, made by the first replica: it authenticates the internal channel
    hop between replicas (HMAC), so no replica-to-replica route trusts its network.

Created with ``IF NOT EXISTS`` by the first replica that starts (the control plane's
own tables are migrated by the store).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg.rows import dict_row

from fleetgate.controlplane.cluster.notes import CHANNEL_NAME, Note


__all__ = [
    "DDL",
    "LinkRow",
    "claim_frame",
    "cluster_secret",
    "create_tables",
    "delete_link",
    "heartbeat",
    "live_links",
    "live_replicas",
    "notify",
    "put_frame",
    "register_channel",
    "replica_of_channel",
    "unregister_channel",
    "upsert_link",
]

DDL: tuple[LiteralString, ...] = (
    """CREATE TABLE IF NOT EXISTS cluster_replicas (
        replica_id text PRIMARY KEY,
        internal_url text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS cluster_links (
        server_id text PRIMARY KEY,
        replica_id text NOT NULL,
        connected_at bigint NOT NULL,
        hostname text,
        agent_version text,
        features text NOT NULL DEFAULT '',
        max_message_bytes integer
    )""",
    """CREATE TABLE IF NOT EXISTS cluster_frames (
        id bigserial PRIMARY KEY,
        replica_id text,
        target text NOT NULL,
        body text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX IF NOT EXISTS cluster_frames_replica ON cluster_frames (replica_id)",
    """CREATE TABLE IF NOT EXISTS cluster_channels (
        channel_id text PRIMARY KEY,
        replica_id text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS cluster_secret (
        id integer PRIMARY KEY CHECK (id = 1),
        secret bytea NOT NULL
    )""",
)

_DDL_LOCK = 0x666C656574_01
"""Advisory lock serializing the first creation of the tables by replicas starting at once."""


@dataclass(frozen=True, slots=True)
class LinkRow:
    """An agent's link as the other replicas see it."""

    server_id: str
    replica_id: str
    connected_at: int
    hostname: str | None
    agent_version: str | None
    features: frozenset[str]
    max_message_bytes: int | None


Conn = psycopg.AsyncConnection[Any]


async def create_tables(conn: Conn) -> None:
    """Create the cluster tables if they do not exist (concurrent starts serialize)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
        for statement in DDL:
            await conn.execute(statement)


async def cluster_secret(conn: Conn) -> bytes:
    """The cluster's HMAC key, made once by whichever replica asks first."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO cluster_secret (id, secret) VALUES (1, %s) ON CONFLICT (id) DO NOTHING",
            (secrets.token_bytes(32),),
        )
        cur = await conn.execute("SELECT secret FROM cluster_secret WHERE id = 1")
        row = await cur.fetchone()
    assert row is not None  # inserted just above
    return bytes(row[0])


async def heartbeat(conn: Conn, replica_id: str, internal_url: str) -> bool:
    """Say this replica is alive (and where it is reached); whether its row was new
    (first beat, or the others had taken it for dead and removed it with its links)."""
    cur = await conn.execute(
        "INSERT INTO cluster_replicas (replica_id, internal_url) VALUES (%s, %s) "
        "ON CONFLICT (replica_id) DO UPDATE SET internal_url = excluded.internal_url, "
        "heartbeat_at = now() RETURNING (xmax = 0)",
        (replica_id, internal_url),
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def live_replicas(conn: Conn, window: float) -> dict[str, str]:
    """Replica id -> internal URL of every replica seen within ``window`` seconds."""
    cur = await conn.execute(
        "SELECT replica_id, internal_url FROM cluster_replicas "
        "WHERE heartbeat_at > now() - make_interval(secs => %s)",
        (window,),
    )
    return {str(r[0]): str(r[1]) for r in await cur.fetchall()}


async def forget_replica(conn: Conn, replica_id: str) -> list[tuple[str, int]]:
    """Remove a replica and its links (it stopped or died); the links it held, as
    ``(server_id, connected_at)``."""
    async with conn.transaction():
        cur = await conn.execute(
            "DELETE FROM cluster_links WHERE replica_id = %s RETURNING server_id, connected_at",
            (replica_id,),
        )
        servers = [(str(r[0]), int(r[1])) for r in await cur.fetchall()]
        await conn.execute("DELETE FROM cluster_channels WHERE replica_id = %s", (replica_id,))
        await conn.execute("DELETE FROM cluster_replicas WHERE replica_id = %s", (replica_id,))
        await notify(conn, Note("down", replica_id))
    return servers


async def dead_replicas(conn: Conn, window: float) -> list[str]:
    """Replicas whose heartbeat is older than ``window`` seconds."""
    cur = await conn.execute(
        "SELECT replica_id FROM cluster_replicas "
        "WHERE heartbeat_at <= now() - make_interval(secs => %s)",
        (window,),
    )
    return [str(r[0]) for r in await cur.fetchall()]


async def upsert_link(conn: Conn, row: LinkRow) -> None:
    """Record that ``row.replica_id`` holds the server's link now, and say so (in the
    caller's transaction)."""
    await conn.execute(
        "INSERT INTO cluster_links (server_id, replica_id, connected_at, hostname, "
        "agent_version, features, max_message_bytes) VALUES (%s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (server_id) DO UPDATE SET replica_id = excluded.replica_id, "
        "connected_at = excluded.connected_at, hostname = excluded.hostname, "
        "agent_version = excluded.agent_version, features = excluded.features, "
        "max_message_bytes = excluded.max_message_bytes",
        (
            row.server_id,
            row.replica_id,
            row.connected_at,
            row.hostname,
            row.agent_version,
            ",".join(sorted(row.features)),
            row.max_message_bytes,
        ),
    )
    await notify(conn, Note("link", row.server_id, row.replica_id))


async def delete_link(conn: Conn, server_id: str, replica_id: str, connected_at: int) -> bool:
    """The link of ``connected_at`` on ``replica_id`` ended (a newer one is left alone;
    in the caller's transaction)."""
    cur = await conn.execute(
        "DELETE FROM cluster_links WHERE server_id = %s AND replica_id = %s AND connected_at = %s",
        (server_id, replica_id, connected_at),
    )
    if cur.rowcount:
        await notify(conn, Note("unlink", server_id, replica_id))
    return bool(cur.rowcount)


async def live_links(conn: Conn, window: float) -> list[LinkRow]:
    """Every link held by a live replica."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT l.* FROM cluster_links l JOIN cluster_replicas r USING (replica_id) "
        "WHERE r.heartbeat_at > now() - make_interval(secs => %s)",
        (window,),
    )
    return [_link(r) for r in await cur.fetchall()]


async def get_link(conn: Conn, server_id: str) -> LinkRow | None:
    """The server's link, wherever it is."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT * FROM cluster_links WHERE server_id = %s", (server_id,))
    row = await cur.fetchone()
    return None if row is None else _link(row)


def _link(r: dict[str, Any]) -> LinkRow:
    return LinkRow(
        server_id=r["server_id"],
        replica_id=r["replica_id"],
        connected_at=r["connected_at"],
        hostname=r["hostname"],
        agent_version=r["agent_version"],
        features=frozenset(f for f in r["features"].split(",") if f),
        max_message_bytes=r["max_message_bytes"],
    )


async def put_frame(conn: Conn, kind: str, target: str, body: str) -> None:
    """Store ``body`` for ``target`` and send the note naming it (at commit)."""
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO cluster_frames (target, body) VALUES (%s, %s) RETURNING id",
            (target, body),
        )
        row = await cur.fetchone()
        assert row is not None  # RETURNING of an INSERT
        frame_id = str(row[0])
        note = Note(kind, frame_id) if target == "*" else Note(kind, frame_id, target)  # type: ignore[arg-type]
        await notify(conn, note)


async def put_agent_frames(conn: Conn, frames: list[tuple[str, str, str]]) -> None:
    """Store ``(replica_id, server_id, frame)`` rows (one statement) and send one
    ``frame`` note per replica (all delivered at commit)."""
    await conn.execute(
        "INSERT INTO cluster_frames (replica_id, target, body) "
        "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])",
        ([f[0] for f in frames], [f[1] for f in frames], [f[2] for f in frames]),
    )
    for replica_id in dict.fromkeys(f[0] for f in frames):
        await notify(conn, Note("frame", replica_id))


async def claim_agent_frames(conn: Conn, replica_id: str) -> list[tuple[str, str]]:
    """Take every frame waiting for ``replica_id``'s agents: ``(server_id, frame)`` in
    the order they were stored."""
    cur = await conn.execute(
        "DELETE FROM cluster_frames WHERE replica_id = %s RETURNING id, target, body",
        (replica_id,),
    )
    rows = sorted(await cur.fetchall())
    return [(str(r[1]), str(r[2])) for r in rows]


async def get_links(conn: Conn, server_ids: list[str]) -> list[LinkRow]:
    """The links of these servers (those that have one)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT * FROM cluster_links WHERE server_id = ANY(%s)", (server_ids,))
    return [_link(r) for r in await cur.fetchall()]


async def claim_frame(conn: Conn, frame_id: int) -> str | None:
    """Take a frame (it is deleted): its body, or ``None`` when another took it."""
    cur = await conn.execute("DELETE FROM cluster_frames WHERE id = %s RETURNING body", (frame_id,))
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def read_frame(conn: Conn, frame_id: int) -> str | None:
    """Read a frame meant for every replica (it expires instead of being claimed)."""
    cur = await conn.execute("SELECT body FROM cluster_frames WHERE id = %s", (frame_id,))
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def expire_frames(conn: Conn, older_than: float) -> int:
    """Drop frames nobody claimed within ``older_than`` seconds (their agent left)."""
    cur = await conn.execute(
        "DELETE FROM cluster_frames WHERE created_at < now() - make_interval(secs => %s)",
        (older_than,),
    )
    return cur.rowcount


async def register_channel(conn: Conn, channel_id: str, replica_id: str) -> None:
    """The channel's client waits on ``replica_id``."""
    await conn.execute(
        "INSERT INTO cluster_channels (channel_id, replica_id) VALUES (%s, %s) "
        "ON CONFLICT (channel_id) DO NOTHING",
        (channel_id, replica_id),
    )


async def unregister_channel(conn: Conn, channel_id: str) -> None:
    """The channel is attached or abandoned."""
    await conn.execute("DELETE FROM cluster_channels WHERE channel_id = %s", (channel_id,))


async def replica_of_channel(conn: Conn, channel_id: str, window: float) -> str | None:
    """The internal URL of the live replica waiting for the channel, if any."""
    cur = await conn.execute(
        "SELECT r.internal_url FROM cluster_channels c JOIN cluster_replicas r "
        "USING (replica_id) WHERE c.channel_id = %s "
        "AND r.heartbeat_at > now() - make_interval(secs => %s)",
        (channel_id, window),
    )
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def notify(conn: Conn, note: Note) -> None:
    """Send ``note`` on the bus (delivered when the current transaction commits)."""
    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL_NAME, note.encode()))
