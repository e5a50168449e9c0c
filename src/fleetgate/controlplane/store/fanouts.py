"""Fan-outs: one command line sent to many servers, each server's run a command row.

A fan-out row keeps what was asked (line, target) and links its commands through
``fanout_commands``; its status is an aggregate over those commands, computed by one
query. Target resolution (ids or names, or a label selector) reads every server in one
statement per 500 names, so a 20,000-server fleet is resolved without a query per server.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from fleetgate.controlplane.store.commands import ChunkRow, CommandRow
from fleetgate.controlplane.store.queries import COMMAND_COLUMNS, COMMAND_FROM
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

# The per-server state of a fan-out's command, as SQL over ``commands c``.
_STATE = (
    "CASE WHEN c.cancelled_at IS NOT NULL THEN 'failed' "
    "WHEN c.handled_at IS NOT NULL THEN (CASE WHEN c.success = 1 THEN 'succeeded' "
    "ELSE 'failed' END) "
    "WHEN c.acked_at IS NOT NULL THEN 'running' ELSE 'queued' END"
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


def resolve_refs(conn: sqlite3.Connection, refs: Sequence[str]) -> tuple[list[Target], list[str]]:
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
    for column, values, into in (("id", wanted_ids, by_id), ("name", names, by_name)):
        for start in range(0, len(values), _CHUNK):
            chunk = values[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT id, name FROM servers WHERE {column} IN ({marks})",  # noqa: S608
                chunk,
            )
            for row in rows:
                into[str(row[column])] = Target(str(row["id"]), str(row["name"]))
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


def select_by_labels(conn: sqlite3.Connection, selector: Selector) -> list[Target]:
    """Every server whose effective labels match ``selector``, by name.

    SQLite aggregates the whole table into one JSON text: one step instead of one per
    server, so a 20,000-server scan does not hand the GIL back and forth with the event
    loop 20,000 times.
    """
    text = conn.execute(
        "SELECT json_group_array(json_array(id, name, json(agent_labels), json(labels))) "
        "FROM (SELECT * FROM servers ORDER BY name)"
    ).fetchone()[0]
    found: list[Target] = []
    for server_id, name, agent_labels, labels in json.loads(text):
        if selector.matches({**agent_labels, **labels}):
            found.append(Target(str(server_id), str(name)))
    return found


def insert_fanout(
    conn: sqlite3.Connection,
    fanout: FanoutRow,
    command_ids: Sequence[str],
) -> None:
    """Store a fan-out and link its commands (call in the transaction that inserts them)."""
    conn.execute(
        "INSERT INTO fanouts (id, line, target, requested_by, created_at, total) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (
            fanout.id,
            fanout.line,
            json.dumps(fanout.target),
            fanout.requested_by,
            fanout.created_at,
            fanout.total,
        ),
    )
    conn.executemany(
        "INSERT INTO fanout_commands (fanout_id, command_id) VALUES (?, ?)",
        [(fanout.id, command_id) for command_id in command_ids],
    )


def get_fanout(conn: sqlite3.Connection, fanout_id: str) -> FanoutRow | None:
    """One fan-out, or ``None``."""
    row = conn.execute("SELECT * FROM fanouts WHERE id = ?", (fanout_id,)).fetchone()
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


def counts(conn: sqlite3.Connection, fanout_id: str) -> dict[str, int]:
    """How many of the fan-out's commands are queued, running, succeeded, failed."""
    result = dict.fromkeys(FANOUT_STATES, 0)
    rows = conn.execute(
        f"SELECT {_STATE} AS state, COUNT(*) FROM fanout_commands f "  # noqa: S608
        "JOIN commands c ON c.id = f.command_id WHERE f.fanout_id = ? GROUP BY state",
        (fanout_id,),
    )
    for row in rows:
        result[str(row[0])] = int(row[1])
    return result


def list_results(
    conn: sqlite3.Connection,
    fanout_id: str,
    *,
    state: str | None,
    limit: int,
    offset: int,
) -> tuple[int, list[CommandRow]]:
    """A page of the fan-out's commands by server name (``state``: one of
    :data:`FANOUT_STATES`, or every command), and how many there are."""
    where = "f.fanout_id = ?"
    params: list[object] = [fanout_id]
    if state is not None:
        where += f" AND {_STATE} = ?"
        params.append(state)
    count = conn.execute(
        f"SELECT COUNT(*) FROM fanout_commands f JOIN commands c ON c.id = f.command_id "  # noqa: S608
        f"WHERE {where}",
        params,
    ).fetchone()[0]
    rows = conn.execute(
        f"SELECT {COMMAND_COLUMNS} FROM fanout_commands f, {COMMAND_FROM} "  # noqa: S608
        f"WHERE c.id = f.command_id AND {where} ORDER BY s.name LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )
    return int(count), [CommandRow.from_row(r) for r in rows]


def read_new_chunks(
    conn: sqlite3.Connection, next_seqs: dict[str, int], *, limit: int
) -> list[tuple[str, ChunkRow]]:
    """Chunks of the given commands from each one's next expected ``seq`` on, in
    ``(command, seq)`` order; at most ``limit`` per command."""
    found: list[tuple[str, ChunkRow]] = []
    for command_id, seq in next_seqs.items():
        rows = conn.execute(
            "SELECT seq, content FROM command_chunks WHERE command_id = ? AND seq >= ? "
            "ORDER BY seq LIMIT ?",
            (command_id, seq, limit),
        )
        found.extend((command_id, ChunkRow(int(r[0]), str(r[1]))) for r in rows)
    return found
