"""The outbox: reports waiting to reach the control plane, durable, with backpressure.

Producers (the command tasks) ``await put(...)``; when the number of unconfirmed reports
reaches the bound, they wait until confirmations free space, which in turn pauses the
command's output reader and, through the pipe, the command itself. A report is written
to the spool before it may be sent (and synced first, unless its command is already
durably recorded as running: see :mod:`fleetgate.agent.spool.writer`), and deleted
from it once confirmed, so whatever the control plane has not stored survives a crash
of the agent. One writer per connection drains it with :meth:`next_batch`.

Waiters (producers for space, the writer for reports, shutdown for an empty outbox)
re-check their condition after every change; a change wakes them through a *pulse*: an
event that is set and replaced, so no lock is needed on the single event loop and the
spool can report a commit from a plain callback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from uuid import UUID

from fleetgate.agent.spool import Batch, PendingReports, Spool
from fleetgate.shared.protocol import CommandReport, SshEvent, SudoDecided


__all__ = ["TIMELINE_WRITE_DELAY", "Outbox"]

TIMELINE_WRITE_DELAY = 0.05
"""Seconds a timeline record (a sudo decision, an ssh event) may wait for other changes
to share its spool write: a loop of ``sudo`` calls costs one fsync per burst, not one
per call. Nothing waits for these records but the control plane's timeline, except a
shell's ssh event (its terminal's recording follows it), which is written at once."""

_TIMELINE_REPORTS = (SudoDecided, SshEvent)


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
        self._pulse = asyncio.Event()
        if spool is not None:
            spool.on_commit(self._committed)

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
        sync_first: bool = True,
    ) -> CommandReport:
        """Add a report built by ``make(rid)``; return once it is durable (see
        :meth:`add` for ``sync_first``)."""
        report, durable = await self.add(make, with_change=with_change, sync_first=sync_first)
        await durable
        return report

    async def add(
        self,
        make: Callable[[int], CommandReport],
        *,
        with_change: Callable[[Batch, CommandReport], None] | None = None,
        within: float | None = None,
        sync_first: bool = True,
    ) -> tuple[CommandReport, Awaitable[None]]:
        """Add a report built by ``make(rid)``, waiting for space; return it with an
        awaitable that completes once it is on disk (and may be sent).

        ``with_change(batch, report)`` is written in the same transaction as the report:
        an inbox state that must never be behind the reports already sent. ``within``:
        the write may wait that many seconds for other changes (``Spool.commit``);
        timeline records wait :data:`TIMELINE_WRITE_DELAY` unless told otherwise.
        ``sync_first`` False: the report may be sent once written, before its fsync
        (``Spool.commit``): only for a command whose inbox row already says running.
        """
        await self._until(lambda: len(self._book) < self._max)
        report = self._book.add(make)
        if within is None and isinstance(report, _TIMELINE_REPORTS):
            within = TIMELINE_WRITE_DELAY
        if self._spool is None:
            self._notify()
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return report, done

        def change(batch: Batch) -> None:
            if with_change is not None:
                with_change(batch, report)
            batch.add_report(report)

        # Staged right after add(), without an await: rids reach the batch in order, so
        # a commit that covers this rid covers every smaller one too.
        return report, self._spool.commit(change, within=within, sync_first=sync_first)

    async def confirm(self, rids: list[int]) -> None:
        """Drop reports the control plane stored; wakes producers waiting for space."""
        if self._book.confirm(rids):
            self._notify()
        if self._spool is not None:
            # Not awaited: if the deletion is lost in a crash, the report is sent once
            # more and the control plane ignores the duplicate.
            self._spool.stage(lambda batch: batch.confirmed.extend(rids))

    async def rewind(self) -> None:
        """A new connection: everything unconfirmed will be sent again, oldest first."""
        self._book.rewind()
        self._notify()

    async def next_batch(self, limit: int = 256) -> list[CommandReport]:
        """Wait for reports not yet sent on this connection and mark them sent."""
        await self._until(self._book.has_unsent)
        batch = self._book.unsent(limit)
        self._book.mark_sent(batch[-1].rid)
        return batch

    async def drained(self) -> None:
        """Wait until every report has been confirmed (used at shutdown, under a timeout)."""
        await self._until(lambda: len(self._book) == 0)

    def _committed(self, batch: Batch) -> None:
        """The spool wrote ``batch`` (and synced it, unless its changes said it need not
        wait for that): its reports may be sent now."""
        if batch.next_rid is not None:
            self._book.mark_durable(batch.next_rid - 1)
            self._notify()

    def _notify(self) -> None:
        self._pulse.set()
        self._pulse = asyncio.Event()

    async def _until(self, condition: Callable[[], bool]) -> None:
        while True:
            pulse = self._pulse  # taken before the check: no wake-up can slip between
            if condition():
                return
            await pulse.wait()
