"""The NDJSON output stream of one command.

Data always comes from the database; a wake-up only says "look again". The reader
takes the command's current event before each read, so a chunk stored between the read
and the wait still wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import sqlalchemy

from fleetgate.controlplane.api.ndjson import Last
from fleetgate.controlplane.api.serializers import command_json
from fleetgate.controlplane.hub.wakeups import CommandWakeups, Subscription
from fleetgate.controlplane.store import Database, commands as commands_store
from fleetgate.controlplane.store.command_rows import ChunkRow, CommandRow
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
    db: Database,
    wakeups: CommandWakeups,
    command_id: str,
    *,
    seq_gte: int = 0,
    fresh: Subscription | None = None,
) -> AsyncGenerator[str, None]:
    """Yield NDJSON lines: ``output`` events in ``seq`` order, then one ``finished``
    (a :class:`Last` line).

    While the command runs, only chunks contiguous from the next expected ``seq`` are sent
    (a late chunk fills its gap first); once the command is final, whatever remains is
    sent in order and the stream ends. Each look at the database is one call on its
    thread (:func:`_poll`), however many queries it takes.

    ``fresh`` is a subscription to the command taken before it was stored (a streaming
    create; the caller closes it): nothing can have happened to the command before it,
    so the first look at the database waits for the first wake-up instead of finding
    what the caller already knows (no output, not final).
    """
    with contextlib.ExitStack() as stack:
        subscription = fresh or stack.enter_context(wakeups.subscribe(command_id))
        # The event to wait on before the next look (None: look now).
        wake = None if fresh is None else fresh.taken
        next_seq = seq_gte
        while True:
            if wake is not None:
                if wakeups.closed:
                    return  # the control plane is shutting down; the client may resume
                try:
                    async with asyncio.timeout(RECHECK):
                        await wake.wait()
                except TimeoutError:
                    pass
            wake = subscription.current()
            poll = await db.read(_poll, command_id, next_seq)
            for chunk in poll.chunks:
                yield ndjson_line({"event": "output", "seq": chunk.seq, "content": chunk.content})
                next_seq = chunk.seq + 1
            if poll.more:
                wake = None
                continue
            if poll.row is None:
                return
            if poll.row.is_final:
                finished = {"event": "finished", "command": command_json(poll.row, now=now_us())}
                yield Last(ndjson_line(finished))
                return


@dataclass(frozen=True, slots=True)
class _Poll:
    chunks: list[ChunkRow]
    """Chunks to send now, in order."""
    more: bool
    """A full batch was read: look again at once."""
    row: CommandRow | None
    """The command (None: deleted)."""


def _poll(conn: sqlalchemy.Connection, command_id: str, next_seq: int) -> _Poll:
    """The command's row and the chunks from ``next_seq`` to send now (on the database
    thread). A running command's chunks stop at the first gap (a late chunk fills it
    first); a final one's are all sent, up to one batch per poll.

    The row is read first: a command seen final has all its chunks stored already, so one
    read of the chunks after it finds them all, also where each statement sees what was
    committed before it (PostgreSQL's READ COMMITTED)."""
    row = commands_store.get_command(conn, command_id)
    if row is None:
        return _Poll([], False, None)
    chunks = commands_store.read_chunks(conn, command_id, seq_gte=next_seq, limit=BATCH)
    if row.is_final:
        # No chunk can arrive any more: whatever follows a gap is sent too.
        return _Poll(chunks, len(chunks) == BATCH, row)
    contiguous = []
    for chunk in chunks:
        if chunk.seq != next_seq:
            break
        contiguous.append(chunk)
        next_seq += 1
    return _Poll(contiguous, len(contiguous) == BATCH, row)
