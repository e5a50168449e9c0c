"""Delivery of many commands at once (a fan-out): every connection's send runs
concurrently, so one slow agent (a full socket buffer) never holds up the others and no
per-command round trip serializes the fan-out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from fleetgate.controlplane.hub.registry import Registry, run_message
from fleetgate.controlplane.store.commands import CommandRow


__all__ = ["send_many"]

log = structlog.get_logger("fleetgate.controlplane.hub")


async def send_many(registry: Registry, rows: Sequence[CommandRow]) -> int:
    """Send ``command.run`` for every row to its server's connection; how many were
    handed to the transport.

    A failed send is not an error, as for one command: the row stays "sent, not
    delivered" and the agent's next ``hello`` brings it again.
    """
    sends: list[asyncio.Task[bool]] = []
    async with asyncio.TaskGroup() as tg:
        for row in rows:
            conn = registry.get(row.server_id)
            if conn is not None:
                sends.append(tg.create_task(conn.send_quietly(run_message(row))))
    sent = sum(1 for task in sends if task.result())
    log.info("commands_sent", count=sent, failed=len(rows) - sent)
    return sent
