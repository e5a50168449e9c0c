"""Commands and their output chunks: create, read, list, cancel. Their rows are in
:mod:`.command_rows`, claiming them for delivery in :mod:`.command_delivery`."""

from __future__ import annotations

import json

from sqlalchemy import Connection, bindparam, func, select, update

from fleetgate.controlplane.store import tables as t
from fleetgate.controlplane.store.command_rows import ChunkRow, CommandRow, NewCommand
from fleetgate.controlplane.store.prepared import Prepared
from fleetgate.controlplane.store.queries import (
    CommandFilter,
    build_command_query,
    command_select,
)


__all__ = [
    "CancelOutcome",
    "cancel_command",
    "get_command",
    "insert_command",
    "list_chunks",
    "list_commands",
    "read_chunks",
]


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
