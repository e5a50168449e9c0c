"""Delivering commands to their agents: claiming the due ones (marked as sent), the
next time one falls due, and finishing one that could never be delivered."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, bindparam, func, select, update

from fleetgate.controlplane.store import tables as t
from fleetgate.controlplane.store.command_rows import CommandRow
from fleetgate.controlplane.store.commands import get_command
from fleetgate.controlplane.store.prepared import Prepared


__all__ = [
    "UNDELIVERABLE_EXIT_CODE",
    "claim_due",
    "claim_for_hello",
    "fail_undelivered",
    "next_due",
]

_c = t.commands.c

# Hot statements, compiled once per dialect (see ``prepared``): every claim and every
# agent's hello run these.
_MARK_SENT = Prepared(
    update(t.commands)
    .where(_c.id == bindparam("cid"), _c.sent_at.is_(None))
    .values(sent_at=bindparam("at"))
)
_UNDELIVERED = Prepared(
    select(_c.id)
    .where(
        _c.server_id == bindparam("sid"),
        _c.delivered_at.is_(None),
        _c.acked_at.is_(None),
        _c.handled_at.is_(None),
        _c.cancelled_at.is_(None),
        _c.scheduled_at <= bindparam("now"),
    )
    .order_by(_c.scheduled_at, _c.added_at)
)  # every agent's hello reads it


def claim_due(
    conn: Connection, server_ids: Sequence[str], *, now: int, limit: int = 1000
) -> list[CommandRow]:
    """Mark as sent, and return oldest first, unsent due commands of these servers."""
    if not server_ids:
        return []
    stmt = (
        select(_c.id)
        .where(
            _c.sent_at.is_(None),
            _c.cancelled_at.is_(None),
            _c.scheduled_at <= now,
            _c.server_id.in_(list(server_ids)),
        )
        .order_by(_c.scheduled_at, _c.added_at)
        .limit(limit)
        # PostgreSQL: rows another transaction is claiming are skipped, not sent twice.
        .with_for_update(skip_locked=True)
    )
    return _mark_sent(conn, list(conn.execute(stmt).scalars()), now)


def claim_for_hello(
    conn: Connection, server_id: str, *, now: int, running: Iterable[str]
) -> list[CommandRow]:
    """Every due, undelivered, uncancelled command of a server (sent or not) except those
    the agent says it is running, marked as sent, oldest first."""
    skip = set(running)
    rows = _UNDELIVERED.rows(conn, {"sid": server_id, "now": now})
    return _mark_sent(conn, [row[0] for row in rows if row[0] not in skip], now)


def _mark_sent(conn: Connection, ids: list[str], now: int) -> list[CommandRow]:
    out: list[CommandRow] = []
    for command_id in ids:
        _MARK_SENT.run(conn, {"cid": command_id, "at": now})
        row = get_command(conn, command_id)
        if row is not None:
            out.append(row)
    return out


def next_due(conn: Connection, *, now: int) -> int | None:
    """The earliest ``scheduled_at`` after ``now`` of an unsent, uncancelled command."""
    stmt = select(func.min(_c.scheduled_at)).where(
        _c.sent_at.is_(None), _c.cancelled_at.is_(None), _c.scheduled_at > now
    )
    first = conn.execute(stmt).scalar_one()
    return None if first is None else int(first)


UNDELIVERABLE_EXIT_CODE = 126
"""Exit code of a command that never reached its agent (the shell's "cannot execute")."""


def fail_undelivered(
    conn: Connection,
    command_id: str,
    *,
    server_id: str,
    now: int,
    phase: str,
    message: str,
) -> bool:
    """Finish a command the agent never accepted (too large, or refused as invalid): a
    final state with ``phase`` and ``message``, its environment erased. Whether it
    changed (a command the agent already reported on is left alone)."""
    cur = conn.execute(
        update(t.commands)
        .where(
            _c.id == command_id,
            _c.server_id == server_id,
            _c.delivered_at.is_(None),
            _c.handled_at.is_(None),
            _c.cancelled_at.is_(None),
        )
        .values(
            handled_at=now,
            elapsed_time=0,
            exit_code=UNDELIVERABLE_EXIT_CODE,
            success=0,
            result="",
            truncated=0,
            output_bytes=0,
            error_phase=phase,
            message=message[:4096],
            env="{}",
            sent_at=func.coalesce(_c.sent_at, now),
        )
    )
    return cur.rowcount > 0
