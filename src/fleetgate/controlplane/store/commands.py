"""Commands and their output chunks: create, read, list, cancel, claim for delivery."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from fleetgate.controlplane.store import tables as t
from fleetgate.controlplane.store.prepared import Prepared
from fleetgate.controlplane.store.queries import (
    CommandFilter,
    build_command_query,
    command_select,
)


__all__ = [
    "CancelOutcome",
    "ChunkRow",
    "CommandRow",
    "NewCommand",
    "cancel_command",
    "claim_due",
    "claim_for_hello",
    "fail_undelivered",
    "get_command",
    "insert_command",
    "list_chunks",
    "list_commands",
    "next_due",
    "read_chunks",
]


@dataclass(frozen=True)
class NewCommand:
    """A validated command create."""

    id: str
    server_id: str
    shell: str
    line: str
    username: str
    groupname: str
    env: dict[str, str]
    timeout: float | None
    requested_by: int | None
    added_at: int
    scheduled_at: int
    work_session_id: str | None = None
    grant: str | None = None
    """The signed grant sent with the command (``docs/protocol.md``), as JSON."""
    sudo: bool = False
    """Elevation: runs as root if the line matches a sudo pattern (``docs/sudo.md``)."""
    requested_token: str | None = None
    """The id of the token that asked (a service token has no ``requested_by`` user)."""


@dataclass(frozen=True)
class CommandRow:
    """A command with its server's name and its requester, as the API shows it."""

    id: str
    server_id: str
    server_name: str
    shell: str
    line: str
    username: str
    groupname: str
    env: dict[str, str]
    timeout: float | None
    requested_by: int | None
    requester_username: str | None
    requester_email: str | None
    added_at: int
    scheduled_at: int
    sent_at: int | None
    delivered_at: int | None
    acked_at: int | None
    handled_at: int | None
    cancelled_at: int | None
    elapsed_time: float | None
    exit_code: int | None
    success: bool | None
    result: str | None
    truncated: bool
    output_bytes: int | None
    error_phase: str | None
    message: str | None
    work_session_id: str | None = None
    grant: str | None = None
    sudo: bool = False
    requested_token: str | None = None
    error_code: str | None = None
    """The agent's refusal code of a command it refused (``error_phase`` ``denied``)."""

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> CommandRow:
        """Build from a row selected with :func:`~.queries.command_select`."""
        success = row["success"]
        return cls(
            id=row["id"],
            server_id=row["server_id"],
            server_name=row["server_name"],
            shell=row["shell"],
            line=row["line"],
            username=row["username"],
            groupname=row["groupname"],
            env=json.loads(row["env"]),
            timeout=row["timeout"],
            requested_by=row["requested_by"],
            requester_username=row["requester_username"],
            requester_email=row["requester_email"],
            added_at=row["added_at"],
            scheduled_at=row["scheduled_at"],
            sent_at=row["sent_at"],
            delivered_at=row["delivered_at"],
            acked_at=row["acked_at"],
            handled_at=row["handled_at"],
            cancelled_at=row["cancelled_at"],
            elapsed_time=row["elapsed_time"],
            exit_code=row["exit_code"],
            success=None if success is None else bool(success),
            result=row["result"],
            truncated=bool(row["truncated"]),
            output_bytes=row["output_bytes"],
            error_phase=row["error_phase"],
            message=row["message"],
            work_session_id=row["work_session_id"],
            grant=row["grant_token"],
            sudo=bool(row["sudo"]),
            requested_token=row["requested_token"],
            error_code=row["error_code"],
        )

    @property
    def is_final(self) -> bool:
        """Finished or cancelled: nothing more will happen to it."""
        return self.handled_at is not None or self.cancelled_at is not None


@dataclass(frozen=True)
class ChunkRow:
    """One chunk of output."""

    seq: int
    content: str


_c = t.commands.c
_chunk = t.command_chunks.c

# Hot statements, compiled once per dialect (see ``prepared``): a command's create, its
# stream's polls and its reads run these.
_INSERTED = (
    "id", "server_id", "shell", "line", "username", "groupname", "env", "timeout",
    "requested_by", "added_at", "scheduled_at", "sent_at", "work_session_id",
    "grant_token", "sudo", "requested_token",
)  # fmt: skip
_INSERT = Prepared(t.commands.insert().values({name: bindparam(name) for name in _INSERTED}))
_GET = Prepared(command_select().where(_c.id == bindparam("cid")))
_READ_CHUNKS = Prepared(
    select(_chunk.seq, _chunk.content)
    .where(_chunk.command_id == bindparam("cid"), _chunk.seq >= bindparam("first"))
    .order_by(_chunk.seq)
    .limit(bindparam("most"))
)
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


def insert_command(
    conn: Connection,
    cmd: NewCommand,
    *,
    sent_at: int | None,
    server_name: str,
    requester_username: str | None = None,
    requester_email: str | None = None,
) -> CommandRow:
    """Insert a command (``sent_at`` set when it is about to be sent right away).

    The row is returned as inserted (the caller knows the server's name and the
    requester), without reading it back.
    """
    _INSERT.run(
        conn,
        {
            "id": cmd.id,
            "server_id": cmd.server_id,
            "shell": cmd.shell,
            "line": cmd.line,
            "username": cmd.username,
            "groupname": cmd.groupname,
            "env": json.dumps(cmd.env),
            "timeout": cmd.timeout,
            "requested_by": cmd.requested_by,
            "added_at": cmd.added_at,
            "scheduled_at": cmd.scheduled_at,
            "sent_at": sent_at,
            "work_session_id": cmd.work_session_id,
            "grant_token": cmd.grant,
            "sudo": int(cmd.sudo),
            "requested_token": cmd.requested_token,
        },
    )
    return CommandRow(
        id=cmd.id,
        server_id=cmd.server_id,
        server_name=server_name,
        shell=cmd.shell,
        line=cmd.line,
        username=cmd.username,
        groupname=cmd.groupname,
        env=cmd.env,
        timeout=cmd.timeout,
        requested_by=cmd.requested_by,
        requester_username=requester_username,
        requester_email=requester_email,
        added_at=cmd.added_at,
        scheduled_at=cmd.scheduled_at,
        sent_at=sent_at,
        delivered_at=None,
        acked_at=None,
        handled_at=None,
        cancelled_at=None,
        elapsed_time=None,
        exit_code=None,
        success=None,
        result=None,
        truncated=False,
        output_bytes=None,
        error_phase=None,
        message=None,
        work_session_id=cmd.work_session_id,
        grant=cmd.grant,
        sudo=cmd.sudo,
        requested_token=cmd.requested_token,
    )


def get_command(conn: Connection, command_id: str) -> CommandRow | None:
    """The command with this id."""
    row = _GET.mapping(conn, {"cid": command_id})
    return None if row is None else CommandRow.from_row(row)


def list_commands(
    conn: Connection,
    flt: CommandFilter,
    *,
    now: int,
    visible_to: int | None,
    limit: int,
    offset: int,
) -> tuple[int, list[CommandRow]]:
    """One page of commands and the total count (see :func:`build_command_query`)."""
    q = build_command_query(flt, now=now, visible_to=visible_to, limit=limit, offset=offset)
    count = int(conn.execute(q.count).scalar_one())
    rows = [CommandRow.from_row(r) for r in conn.execute(q.select).mappings()]
    return count, rows


def list_chunks(
    conn: Connection,
    command_id: str,
    *,
    seq_gte: int | None,
    seq_lte: int | None,
    limit: int,
    offset: int,
) -> tuple[int, list[ChunkRow]]:
    """One page of a command's chunks by ``seq`` and the total count."""
    where = [_chunk.command_id == command_id]
    if seq_gte is not None:
        where.append(_chunk.seq >= seq_gte)
    if seq_lte is not None:
        where.append(_chunk.seq <= seq_lte)
    count = conn.execute(select(func.count()).select_from(t.command_chunks).where(*where))
    stmt = (
        select(_chunk.seq, _chunk.content)
        .where(*where)
        .order_by(_chunk.seq)
        .limit(limit)
        .offset(offset)
    )
    chunks = [ChunkRow(int(seq), str(content)) for seq, content in conn.execute(stmt)]
    return int(count.scalar_one()), chunks


def read_chunks(conn: Connection, command_id: str, *, seq_gte: int, limit: int) -> list[ChunkRow]:
    """Up to ``limit`` chunks with ``seq >= seq_gte``, in order (for the stream)."""
    rows = _READ_CHUNKS.rows(conn, {"cid": command_id, "first": seq_gte, "most": limit})
    return [ChunkRow(int(seq), str(content)) for seq, content in rows]


class CancelOutcome:
    """Results of :func:`cancel_command`."""

    NOT_FOUND = "not_found"
    ALREADY_SENT = "already_sent"
    CANCELLED = "cancelled"


def cancel_command(conn: Connection, command_id: str, *, now: int) -> str:
    """Cancel a command not yet sent; a :class:`CancelOutcome` value.

    Cancelling a command already cancelled is a success (idempotent).
    """
    cur = conn.execute(
        update(t.commands)
        .where(
            _c.id == command_id,
            _c.sent_at.is_(None),
            _c.cancelled_at.is_(None),
            _c.handled_at.is_(None),
        )
        .values(cancelled_at=now, env="{}")
    )
    if cur.rowcount:
        return CancelOutcome.CANCELLED
    row = conn.execute(select(_c.cancelled_at).where(_c.id == command_id)).first()
    if row is None:
        return CancelOutcome.NOT_FOUND
    return CancelOutcome.CANCELLED if row[0] is not None else CancelOutcome.ALREADY_SENT


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
