"""The NDJSON output stream of one command.

Data always comes from the database; a wake-up only says "look again". The reader
takes the command's current event before each read, so a chunk stored between the read
and the wait still wakes it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import sqlalchemy

from fleetgate.controlplane.api.serializers import command_json
from fleetgate.controlplane.hub.wakeups import CommandWakeups
from fleetgate.controlplane.store import Database, commands as commands_store
from fleetgate.controlplane.store.commands import ChunkRow, CommandRow
from fleetgate.controlplane.timeutil import now_us


__all__ = ["ndjson_line", "stream_command"]

BATCH = 500
"""Chunks read per query."""
RECHECK = 30.0
"""Longest wait without a notification before the database is read again (a safety net)."""


def ndjson_line(obj: object) -> str:
    """One NDJSON line (compact JSON and a newline)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"


async def stream_command(
    db: Database, wakeups: CommandWakeups, command_id: str, *, seq_gte: int = 0
) -> AsyncIterator[str]:
    """Yield NDJSON lines: ``output`` events in ``seq`` order, then one ``finished``.

    While the command runs, only chunks contiguous from the next expected ``seq`` are sent
    (a late chunk fills its gap first); once the command is final, whatever remains is
    sent in order and the stream ends. Each look at the database is one call on its
    thread (:func:`_poll`), however many queries it takes.
    """
    next_seq = seq_gte
    with wakeups.subscribe(command_id) as subscription:
        while True:
            wake = subscription.current()
            poll = await db.read(_poll, command_id, next_seq)
            for chunk in poll.chunks:
                yield ndjson_line({"event": "output", "seq": chunk.seq, "content": chunk.content})
                next_seq = chunk.seq + 1
            if poll.more:
                continue
            if poll.row is None:
                return
            if poll.row.is_final:
                yield ndjson_line(
                    {"event": "finished", "command": command_json(poll.row, now=now_us())}
                )
                return
            if wakeups.closed:
                return  # the control plane is shutting down; the client may resume
            try:
                async with asyncio.timeout(RECHECK):
                    await wake.wait()
            except TimeoutError:
                pass


@dataclass(frozen=True, slots=True)
class _Poll:
    chunks: list[ChunkRow]
    """Chunks to send now, in order."""
    more: bool
    """A full batch was read: read again before looking at the command."""
    row: CommandRow | None
    """The command (None: deleted), read after the chunks; unset when ``more``."""


def _poll(conn: sqlalchemy.Connection, command_id: str, next_seq: int) -> _Poll:
    """The chunks from ``next_seq`` to send now, and the command's row (on the database
    thread). A running command's chunks stop at the first gap (a late chunk fills it
    first); a final one's are all sent, up to one batch per poll."""
    chunks = commands_store.read_chunks(conn, command_id, seq_gte=next_seq, limit=BATCH)
    contiguous = []
    for chunk in chunks:
        if chunk.seq != next_seq:
            break
        contiguous.append(chunk)
        next_seq += 1
    if len(chunks) == BATCH and len(contiguous) == BATCH:
        return _Poll(contiguous, True, None)
    row = commands_store.get_command(conn, command_id)
    if row is None or not row.is_final:
        return _Poll(contiguous, False, row)
    # Final: no chunk can arrive any more; whatever follows a gap is sent too.
    rest = commands_store.read_chunks(conn, command_id, seq_gte=next_seq, limit=BATCH)
    return _Poll(contiguous + rest, len(rest) == BATCH, row)
