"""Delivery of many commands at once (a fan-out): every connection's send runs
concurrently, so one slow agent (a full socket buffer) never holds up the others and no
per-command round trip serializes the fan-out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from fleetgate.controlplane.hub.registry import Registry
from fleetgate.controlplane.hub.undeliverable import Notify, deliver_run
from fleetgate.controlplane.store import Database
from fleetgate.shared.protocol import CommandRun


__all__ = ["send_many"]

log = structlog.get_logger("fleetgate.controlplane.hub")


async def send_many(
    registry: Registry, runs: Sequence[tuple[str, CommandRun]], db: Database, notify: Notify
) -> int:
    """Send each ``(server id, command.run)`` to its server's connection; how many were
    handed to the transport (or finished as larger than that agent accepts, see
    ``fleetgate.controlplane.hub.undeliverable``).

    A failed send is not an error, as for one command: the row stays "sent, not
    delivered" and the agent's next ``hello`` brings it again.
    """
    sends: list[asyncio.Task[bool]] = []
    async with asyncio.TaskGroup() as tg:
        for server_id, run in runs:
            conn = registry.get(server_id)
            if conn is not None:
                sends.append(tg.create_task(deliver_run(conn, db, run, notify)))
    sent = sum(1 for task in sends if task.result())
    log.info("command.sent_many", count=sent, failed=len(runs) - sent)
    return sent
