"""One replica at a time runs the periodic duties: the scheduler, the work-session clock,
the sweeps. It is the one holding a PostgreSQL advisory lock on a dedicated connection.

``pg_try_advisory_lock`` is held by a session: when the holder dies (SIGKILL, a lost
network) PostgreSQL ends its session and releases the lock, and another replica takes
it at its next try. The duties themselves stay safe when two replicas overlap during a
takeover (the store claims due rows in one transaction; the agent runs a command id
once), so the lock is about not doing the work twice, not about correctness alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Final

import psycopg
import structlog

from fleetgate.controlplane.cluster.bus import connect


__all__ = ["DUTIES_LOCK", "Duties", "Leadership"]

log = structlog.get_logger("fleetgate.controlplane.cluster")

DUTIES_LOCK: Final = 0x666C656574_02
"""The advisory lock key of the periodic duties (``fleet`` in hex, then a number)."""

Duties = Callable[[], Coroutine[Any, Any, None]]
"""Runs the duties until cancelled (a TaskGroup of the scheduler, the clock...)."""


class Leadership:
    """Tries for the lock every ``retry`` seconds; runs ``duties`` while holding it.

    The holder checks its connection every ``retry`` seconds too: a lost connection
    means the lock may already be another replica's, so the duties are cancelled at once.
    """

    def __init__(self, conninfo: str, duties: Duties, *, retry: float = 1.0) -> None:
        self._conninfo = conninfo
        self._duties = duties
        self._retry = retry
        self.leading = asyncio.Event()
        """Set while this replica holds the lock (and runs the duties)."""

    async def run(self) -> None:
        """Forever: acquire, lead until the connection fails, release, try again."""
        while True:
            try:
                await self._term()
            except* (psycopg.OperationalError, psycopg.InterfaceError) as group:
                # Raised alone (while trying) or through the duties' TaskGroup (leading).
                first = group.exceptions[0]
                log.warning("cluster.leader_connection_lost", error=str(first).strip()[:300])
            finally:
                if self.leading.is_set():
                    log.info("cluster.leader_stepped_down")
                self.leading.clear()
            await asyncio.sleep(self._retry)

    async def _term(self) -> None:
        conn = await connect(self._conninfo)
        async with conn:
            while True:
                if await _try_lock(conn):
                    break
                await asyncio.sleep(self._retry)
            self.leading.set()
            log.info("cluster.leader_elected")
            async with asyncio.TaskGroup() as tg:
                duties = tg.create_task(self._duties(), name="leader-duties")
                try:
                    while not duties.done():
                        await asyncio.sleep(self._retry)
                        await conn.execute("SELECT 1")  # raises when the session is gone
                finally:
                    duties.cancel()


async def _try_lock(conn: psycopg.AsyncConnection[Any]) -> bool:
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (DUTIES_LOCK,))
    row = await cur.fetchone()
    return bool(row and row[0])
