"""The outbox: reports waiting to reach the control plane, durable, with backpressure.

Producers (the command tasks) ``await put(...)``; when the number of unconfirmed reports
reaches the bound, they wait until confirmations free space, which in turn pauses the
command's output reader and, through the pipe, the command itself. A report is written
to the spool before it may be sent, and deleted from it once confirmed, so whatever the
control plane has not stored survives a crash of the agent. One writer per connection
drains it with :meth:`next_batch`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from uuid import UUID

from agent.protocol import CommandReport
from agent.spool import Batch, PendingReports, Spool


__all__ = ["Outbox"]


class Outbox:
    """Bounded store of unconfirmed reports, shared by producers and the backhaul writer.

    Without a ``spool`` (unit tests of the backhaul) reports live in memory only.
    """

    def __init__(
        self,
        *,
        max_reports: int,
        spool: Spool | None = None,
        pending: PendingReports | None = None,
    ) -> None:
        self._book = pending if pending is not None else PendingReports(durable=spool is not None)
        self._spool = spool
        self._max = max_reports
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._book)

    def holds_final(self, command_id: UUID) -> bool:
        """Whether this command's final report is still waiting for confirmation."""
        return self._book.holds_final(command_id)

    async def put(
        self,
        make: Callable[[int], CommandReport],
        *,
        with_change: Callable[[Batch, CommandReport], None] | None = None,
    ) -> CommandReport:
        """Add a report built by ``make(rid)``; return once it is durable.

        ``with_change`` is written in the same transaction as the report (an inbox state
        that must never be behind the reports already sent).
        """
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._book) < self._max)
            report = self._book.add(make)
            if self._spool is None:
                self._changed.notify_all()
                return report

            def change(batch: Batch) -> None:
                if with_change is not None:
                    with_change(batch, report)
                batch.add_report(report)

            # Staged under the lock right after add(): rids reach the batch in order, so
            # a commit that covers this rid covers every smaller one too.
            durable = self._spool.commit(change)
        await durable
        async with self._changed:
            self._book.mark_durable(report.rid)
            self._changed.notify_all()
        return report

    async def confirm(self, rids: list[int]) -> None:
        """Drop reports the control plane stored; wakes producers waiting for space."""
        async with self._changed:
            if self._book.confirm(rids):
                self._changed.notify_all()
        if self._spool is not None:
            # Not awaited: if the deletion is lost in a crash, the report is sent once
            # more and the control plane ignores the duplicate.
            self._spool.stage(lambda batch: batch.confirmed.extend(rids))

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
