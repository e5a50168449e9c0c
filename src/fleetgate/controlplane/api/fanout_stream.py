"""The NDJSON stream of a fan-out: every server's command stream, merged.

Each command is followed by :func:`stream_command` (the single command's reader, with its
ordering and resumption rules) in its own task; the lines go through one bounded queue, so
a slow client holds every reader back instead of growing a buffer. Each line gains the
server's name; after the last server's ``finished`` line comes one ``done`` line with the
aggregated status.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from fleetgate.controlplane.api.stream import ndjson_line, stream_command
from fleetgate.controlplane.hub.wakeups import CommandWakeups
from fleetgate.controlplane.store import Database
from fleetgate.controlplane.store.command_rows import CommandRow


__all__ = ["stream_fanout"]

QUEUE_LINES = 256
"""Lines read from the commands' streams but not yet sent to the client."""


async def stream_fanout(
    db: Database,
    wakeups: CommandWakeups,
    commands: Sequence[CommandRow],
    status: Callable[[], Awaitable[dict[str, Any]]],
) -> AsyncIterator[str]:
    """Yield every command's ``output`` and ``finished`` lines (with ``server`` and
    ``server_name``), in arrival order, then ``{"event": "done", "fanout": status}``."""
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=QUEUE_LINES)

    # One reader per command (at most the fan-out's size, MAX_TARGETS): a reader waits on
    # its command's wake-up event, so a long-running command never holds up the others.
    async def follow(row: CommandRow) -> None:
        async for line in stream_command(db, wakeups, row.id):
            event = json.loads(line)
            event["server"] = row.server_id
            event["server_name"] = row.server_name
            event["command_id"] = row.id
            await queue.put(ndjson_line(event))
        await queue.put(None)

    async with asyncio.TaskGroup() as tg:
        for row in commands:
            tg.create_task(follow(row))
        remaining = len(commands)
        while remaining:
            line = await queue.get()
            if line is None:
                remaining -= 1
            else:
                yield line
    yield ndjson_line({"event": "done", "fanout": await status()})
