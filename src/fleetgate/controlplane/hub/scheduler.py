"""Delivery of scheduled commands when they come due.

The scheduler sleeps until the earliest due time of an unsent command, or until it is
woken (a new scheduled command, an agent's hello); there is no fixed polling tick.
Commands that come due while their server is offline stay unsent and are delivered by
the agent's next ``hello``.
"""

from __future__ import annotations

import asyncio

import structlog

from fleetgate.controlplane.hub.registry import Registry
from fleetgate.controlplane.hub.timer import run_timer
from fleetgate.controlplane.hub.undeliverable import Notify, deliver
from fleetgate.controlplane.store import Database, command_delivery
from fleetgate.controlplane.timeutil import now_us


__all__ = ["Scheduler"]

log = structlog.get_logger("controlplane.scheduler")

MAX_SLEEP = 3600.0
"""Upper bound of one sleep (a wall-clock jump then costs at most this much lateness)."""


class Scheduler:
    """See the module docstring. :meth:`run` is a long-lived task owned by the app."""

    def __init__(self, db: Database, registry: Registry, notify: Notify) -> None:
        self.db = db
        self.registry = registry
        self.notify = notify
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Re-examine the schedule now (a scheduled command was added)."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver due commands forever; cancelled at shutdown."""
        await run_timer(self.run_once, self._wake, name="scheduler")

    async def run_once(self) -> float | None:
        """Send what is due now; return seconds until the next due command (or None)."""
        now = now_us()
        server_ids = self.registry.server_ids()
        while server_ids:
            rows = await self.db.write(command_delivery.claim_due, server_ids, now=now)
            for row in rows:
                conn = self.registry.get(row.server_id)
                if conn is not None and await deliver(conn, self.db, row, self.notify):
                    log.info("scheduler.command_sent", command_id=row.id, server_id=row.server_id)
            if len(rows) < 1000:
                break
        next_due = await self.db.read(command_delivery.next_due, now=now)
        if next_due is None:
            return None
        return min(MAX_SLEEP, max(0.0, (next_due - now_us()) / 1_000_000))
