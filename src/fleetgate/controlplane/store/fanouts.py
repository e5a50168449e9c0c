"""Fan-outs: one command line sent to many servers, each server's run a command row.

A fan-out row keeps what was asked (line, target) and links its commands through
``fanout_commands``; its status is an aggregate over those commands, computed by one
query. Target resolution (ids or names, or a label selector) reads every server in one
statement per 500 names, so a 20,000-server fleet is resolved without a query per server.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, case, func, select, text

from fleetgate.controlplane.store import tables as t
from fleetgate.controlplane.store.command_rows import ChunkRow, CommandRow
from fleetgate.controlplane.store.queries import command_select
from fleetgate.shared.labels import Selector


__all__ = [
    "FANOUT_STATES",
    "FanoutRow",
    "Target",
    "counts",
    "get_fanout",
    "insert_fanout",
    "list_results",
    "read_new_chunks",
    "resolve_refs",
    "select_by_labels",
]

FANOUT_STATES = ("queued", "running", "succeeded", "failed")

_c = t.commands.c
_f = t.fanout_commands.c
# The per-server state of a fan-out's command, over ``commands``.
_STATE = case(
    (_c.cancelled_at.is_not(None), "failed"),
    (_c.handled_at.is_not(None), case((_c.success == 1, "succeeded"), else_="failed")),
    (_c.acked_at.is_not(None), "running"),
    else_="queued",
)
_CHUNK = 500


@dataclass(frozen=True)
class Target:
    """One targeted server."""

    id: str
    name: str


@dataclass(frozen=True)
class FanoutRow:
    """One fan-out."""

    id: str
    line: str
    target: dict[str, object]
    requested_by: int | None
    created_at: int
    total: int


def resolve_refs(conn: Connection, refs: Sequence[str]) -> tuple[list[Target], list[str]]:
    """The servers named by ``refs`` (ids or names, in the given order, duplicates once)
    and the refs that name no server."""
    ids: dict[str, str] = {}
    for ref in refs:
        try:
            ids[ref] = str(uuid.UUID(ref))
        except ValueError:
            continue
    by_id: dict[str, Target] = {}
    by_name: dict[str, Target] = {}
    wanted_ids = sorted(set(ids.values()))
    names = sorted({ref for ref in refs if ref not in ids} | set(ids))
    server = t.servers.c
    for column, values, into in ((server.id, wanted_ids, by_id), (server.name, names, by_name)):
        for start in range(0, len(values), _CHUNK):
            chunk = values[start : start + _CHUNK]
            rows = conn.execute(select(server.id, server.name).where(column.in_(chunk)))
            for server_id, name in rows:
                key = server_id if column is server.id else name
                into[str(key)] = Target(str(server_id), str(name))
    found: list[Target] = []
    seen: set[str] = set()
    missing: list[str] = []
    for ref in refs:
        target = by_id.get(ids[ref]) if ref in ids else None
        target = target or by_name.get(ref)
        if target is None:
            missing.append(ref)
        elif target.id not in seen:
            seen.add(target.id)
            found.append(target)
    return found, missing


def select_by_labels(conn: Connection, selector: Selector) -> list[Target]:
    """Every server whose effective labels match ``selector``, by name.

    SQLite aggregates the whole table into one JSON text: one step instead of one per
    server, so a 20,000-server scan does not hand the GIL back and forth with the event
    loop 20,000 times (the driver releases it at each row). psycopg receives a result
    whole, so PostgreSQL reads the rows as they are.
    """
    found: list[Target] = []
    for server_id, name, agent_labels, labels in _labelled_servers(conn):
        if selector.matches({**agent_labels, **labels}):
            found.append(Target(str(server_id), str(name)))
    return found


def _labelled_servers(conn: Connection) -> list[tuple[str, str, dict[str, str], dict[str, str]]]:
    if conn.dialect.name == "sqlite":
        aggregate = text(
            "SELECT json_group_array(json_array(id, name, json(agent_labels), json(labels))) "
            "FROM (SELECT * FROM servers ORDER BY name)"
        )
        rows: list[list[object]] = json.loads(conn.execute(aggregate).scalar_one())
        return [(str(a), str(b), dict(c), dict(d)) for a, b, c, d in rows]  # type: ignore[call-overload]
    server = t.servers.c
    stmt = select(server.id, server.name, server.agent_labels, server.labels).order_by(server.name)
    return [(a, b, json.loads(c), json.loads(d)) for a, b, c, d in conn.execute(stmt)]


def insert_fanout(
    conn: Connection,
    fanout: FanoutRow,
    command_ids: Sequence[str],
) -> None:
    """Store a fan-out and link its commands (call in the transaction that inserts them)."""
    conn.execute(
        t.fanouts.insert().values(
            id=fanout.id,
            line=fanout.line,
            target=json.dumps(fanout.target),
            requested_by=fanout.requested_by,
            created_at=fanout.created_at,
            total=fanout.total,
        )
    )
    if command_ids:
        conn.execute(
            t.fanout_commands.insert(),
            [{"fanout_id": fanout.id, "command_id": command_id} for command_id in command_ids],
        )


def get_fanout(conn: Connection, fanout_id: str) -> FanoutRow | None:
    """One fan-out, or ``None``."""
    row = conn.execute(select(t.fanouts).where(t.fanouts.c.id == fanout_id)).mappings().first()
    if row is None:
        return None
    return FanoutRow(
        id=row["id"],
        line=row["line"],
        target=json.loads(row["target"]),
        requested_by=row["requested_by"],
        created_at=row["created_at"],
        total=row["total"],
    )


def counts(conn: Connection, fanout_id: str) -> dict[str, int]:
    """How many of the fan-out's commands are queued, running, succeeded, failed."""
    result = dict.fromkeys(FANOUT_STATES, 0)
    state = _STATE.label("state")
    stmt = (
        select(state, func.count())
        .select_from(t.fanout_commands.join(t.commands, _c.id == _f.command_id))
        .where(_f.fanout_id == fanout_id)
        .group_by(state)
    )
    for name, number in conn.execute(stmt):
        result[str(name)] = int(number)
    return result


def list_results(
    conn: Connection,
    fanout_id: str,
    *,
    state: str | None,
    limit: int,
    offset: int,
) -> tuple[int, list[CommandRow]]:
    """A page of the fan-out's commands by server name (``state``: one of
    :data:`FANOUT_STATES`, or every command), and how many there are."""
    where = [_f.fanout_id == fanout_id]
    if state is not None:
        where.append(_STATE == state)
    count = conn.execute(
        select(func.count())
        .select_from(t.fanout_commands.join(t.commands, _c.id == _f.command_id))
        .where(*where)
    ).scalar_one()
    stmt = (
        command_select()
        .join(t.fanout_commands, _f.command_id == _c.id)
        .where(*where)
        .order_by(t.servers.c.name)
        .limit(limit)
        .offset(offset)
    )
    return int(count), [CommandRow.from_row(r) for r in conn.execute(stmt).mappings()]


def read_new_chunks(
    conn: Connection, next_seqs: dict[str, int], *, limit: int
) -> list[tuple[str, ChunkRow]]:
    """Chunks of the given commands from each one's next expected ``seq`` on, in
    ``(command, seq)`` order; at most ``limit`` per command."""
    found: list[tuple[str, ChunkRow]] = []
    chunk = t.command_chunks.c
    for command_id, seq in next_seqs.items():
        stmt = (
            select(chunk.seq, chunk.content)
            .where(chunk.command_id == command_id, chunk.seq >= seq)
            .order_by(chunk.seq)
            .limit(limit)
        )
        found.extend((command_id, ChunkRow(int(n), str(body))) for n, body in conn.execute(stmt))
    return found
