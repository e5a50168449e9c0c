"""The NDJSON output stream of one command.

Data always comes from the database; a wake-up only says "look again". The reader
takes the command's current event before each read, so a chunk stored between the read
and the wait still wakes it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fleetgate.controlplane.api.serializers import command_json
from fleetgate.controlplane.hub.wakeups import CommandWakeups
from fleetgate.controlplane.store import Database, commands as commands_store
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
    sent in order and the stream ends.
    """
    next_seq = seq_gte
    with wakeups.subscribe(command_id) as subscription:
        while True:
            wake = subscription.current()
            chunks = await db.read(
                commands_store.read_chunks, command_id, seq_gte=next_seq, limit=BATCH
            )
            for chunk in chunks:
                if chunk.seq != next_seq:
                    break
                yield ndjson_line({"event": "output", "seq": chunk.seq, "content": chunk.content})
                next_seq += 1
            if len(chunks) == BATCH and next_seq == chunks[-1].seq + 1:
                continue
            row = await db.read(commands_store.get_command, command_id)
            if row is None:
                return
            if row.is_final:
                while True:
                    rest = await db.read(
                        commands_store.read_chunks, command_id, seq_gte=next_seq, limit=BATCH
                    )
                    for chunk in rest:
                        yield ndjson_line(
                            {"event": "output", "seq": chunk.seq, "content": chunk.content}
                        )
                        next_seq = chunk.seq + 1
                    if len(rest) < BATCH:
                        break
                yield ndjson_line({"event": "finished", "command": command_json(row, now=now_us())})
                return
            if wakeups.closed:
                return  # the control plane is shutting down; the client may resume
            try:
                async with asyncio.timeout(RECHECK):
                    await wake.wait()
            except TimeoutError:
                pass
