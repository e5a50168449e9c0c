"""Changes to the durable spool, collected in memory and written in one transaction.

Pure data, no I/O. The event loop appends to the open batch as things happen (a command
accepted, a report made, a confirmation received); the store's worker thread writes a
whole batch at once, so a burst of reports costs one commit instead of one per report.
Order matters only within a command, and a batch is applied in the order it was built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from fleetgate.agent.spool.inbox import CommandState
from fleetgate.shared.protocol import CommandFinished, CommandReport, CommandRun


__all__ = ["Batch", "FinishedEntry"]


@dataclass(frozen=True)
class FinishedEntry:
    """The inbox row of a finished command: its final report, kept to answer redeliveries."""

    command_id: UUID
    finished_at: datetime
    report: CommandFinished


@dataclass
class Batch:
    """One transaction's worth of changes."""

    accepted: list[tuple[CommandRun, datetime]] = field(default_factory=list)
    """Commands accepted, with their delivery time: kept until they finish, so that one
    that was still queued at a crash can run after the restart."""
    states: list[tuple[UUID, CommandState]] = field(default_factory=list)
    finished: list[FinishedEntry] = field(default_factory=list)
    forgotten: list[UUID] = field(default_factory=list)
    reports: list[CommandReport] = field(default_factory=list)
    confirmed: list[int] = field(default_factory=list)
    next_rid: int | None = None
    sync_first: bool = False
    """A change in it is acted on only once it survives a power cut: a waiter of
    :meth:`~fleetgate.agent.spool.writer.Spool.commit` asked for the fsync first."""

    def add_report(self, report: CommandReport) -> None:
        """A new report (reports are added in rid order)."""
        self.reports.append(report)
        self.next_rid = report.rid + 1

    @property
    def must_sync(self) -> bool:
        """Whether the batch is fsynced before anyone acts on it (``synchronous=FULL``):
        a command recorded as accepted or running (its delivery is reported, its process
        started, only once that survives a power cut), or a waiter that asked for it."""
        return self.sync_first or bool(self.accepted or self.states)

    @property
    def must_persist(self) -> bool:
        """Whether the batch is fsynced at all: before it is acted on (:attr:`must_sync`),
        or right after it was written (reports of commands already durably running, sent
        meanwhile). Confirmations and forgotten ids alone are never fsynced on their own:
        losing them only means a report is sent again or an id is remembered longer."""
        return bool(self.accepted or self.states or self.finished or self.reports)

    @property
    def forgets(self) -> bool:
        """Whether it deletes something: a confirmed report, a forgotten command."""
        return bool(self.confirmed or self.forgotten)

    def __bool__(self) -> bool:
        return bool(
            self.accepted
            or self.states
            or self.finished
            or self.forgotten
            or self.reports
            or self.confirmed
        )
