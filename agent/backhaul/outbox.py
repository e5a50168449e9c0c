"""The outbox: reports waiting to reach the control plane, with backpressure.

Producers (the command tasks) ``await put(...)``; when the number of unconfirmed reports
reaches the bound, they wait until confirmations free space, which in turn pauses the
command's output reader and, through the pipe, the command itself. One writer per
connection drains it with :meth:`next_batch`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.protocol import CommandReport
from agent.spool import PendingReports


__all__ = ["Outbox"]


class Outbox:
    """Bounded store of unconfirmed reports, shared by producers and the backhaul writer."""

    def __init__(self, *, max_reports: int) -> None:
        self._book = PendingReports()
        self._max = max_reports
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._book)

    async def put(self, make: Callable[[int], CommandReport]) -> CommandReport:
        """Add a report built by ``make(rid)``, waiting while the outbox is full."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._book) < self._max)
            report = self._book.add(make)
            self._changed.notify_all()
            return report

    async def confirm(self, rids: list[int]) -> None:
        """Drop reports the control plane stored; wakes producers waiting for space."""
        async with self._changed:
            if self._book.confirm(rids):
                self._changed.notify_all()

    async def rewind(self) -> None:
        """A new connection: everything unconfirmed will be sent again, oldest first."""
        async with self._changed:
            self._book.rewind()
            self._changed.notify_all()

    async def next_batch(self, limit: int = 256) -> list[CommandReport]:
        """Wait for reports not yet sent on this connection and mark them sent."""
        async with self._changed:
            await self._changed.wait_for(self._book.has_unsent)
            batch = self._book.unsent(limit)
            self._book.mark_sent(batch[-1].rid)
            return batch

    async def drained(self) -> None:
        """Wait until every report has been confirmed (used at shutdown, under a timeout)."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._book) == 0)
