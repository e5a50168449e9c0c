"""The work-session clock: persists starts and expiries when they come due.

Reads are already correct without it (every read settles the session against the clock);
this task makes the change, and its timeline item, happen at the due time even when
nobody looks, and tells the listeners of ended sessions. It sleeps until the earliest
start or expiry of a live session, or until :meth:`changed` wakes it; no fixed tick.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from fleetgate.controlplane.hub.timer import run_timer
from fleetgate.controlplane.store import Database, worksession_due
from fleetgate.controlplane.store.worksessions import WorkSessionRow
from fleetgate.controlplane.timeutil import now_us
from fleetgate.controlplane.worksession.lifecycle import TERMINAL


__all__ = ["EndedListener", "WorkSessionClock"]

log = structlog.get_logger("controlplane.worksessions")

MAX_SLEEP = 3600.0

EndedListener = Callable[[WorkSessionRow], Awaitable[None]]
"""Called once a session has ended (completed, expired, revoked, ...)."""


class WorkSessionClock:
    """See the module docstring. :meth:`run` is a long-lived task owned by the app."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._wake = asyncio.Event()
        self._changes = asyncio.Event()
        # The hook for live streams bound to a session: the websh and tunnel relays (later
        # issues) register here to close their streams when the session ends.
        self.listeners: list[EndedListener] = []

    def changed(self) -> None:
        """A session was created or changed: re-examine the next due time."""
        self._wake.set()
        self._notify()

    def wake(self) -> None:
        """Re-examine the next due time (a replica's periodic poke: sessions may have
        been created or changed on another replica)."""
        self._wake.set()

    def _notify(self) -> None:
        event, self._changes = self._changes, asyncio.Event()
        event.set()

    def next_change(self) -> asyncio.Event:
        """An event set at the next change of any session (take it before reading)."""
        return self._changes

    async def ended(self, row: WorkSessionRow) -> None:
        """Tell every listener that ``row`` ended (its status is terminal)."""
        log.info("work_session.ended", work_session=row.id, status=row.status.value)
        for listener in self.listeners:
            try:
                await listener(row)
            except Exception as exc:
                log.error("work_session.listener_failed", work_session=row.id, exc_info=exc)

    async def run(self) -> None:
        """Settle due sessions forever; cancelled at shutdown."""
        await run_timer(self.run_once, self._wake, name="work_session_clock")

    async def run_once(self) -> float | None:
        """Settle what is due; return seconds until the next due move (or None)."""
        changed = await self.db.write(worksession_due.settle_all, now=now_us())
        if changed:
            self._notify()
        for row in changed:
            if row.status in TERMINAL:
                await self.ended(row)
        next_due = await self.db.read(worksession_due.next_due_at)
        if next_due is None:
            return None
        return min(MAX_SLEEP, max(0.0, (next_due - now_us()) / 1_000_000))
