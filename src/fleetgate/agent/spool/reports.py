"""Reports not yet confirmed by the control plane, in the order they were made.

Pure bookkeeping, no I/O: the asyncio outbox wraps it. Each report gets a report id
(``rid``) in increasing order. A report stays here until a ``confirm`` names its rid; a
send queue remembers what the current connection has not sent yet, and a new connection
starts again from the oldest unconfirmed report, so nothing is lost across reconnects
and the control plane, which stores reports idempotently, sees each at least once.

A report may only be sent once it is on disk, so that a report the control plane saw is
never missing after a crash. Reports are written in rid order, in batches; the *durable
mark* says how far the writes got, and only reports up to it join the send queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from uuid import UUID

from fleetgate.shared.protocol import CommandFinished, CommandReport


__all__ = ["PendingReports"]


class PendingReports:
    """Unconfirmed reports keyed by rid, plus what the current connection still has to send.

    With ``durable=False`` (no store) every report may be sent as soon as it is added.
    """

    def __init__(self, *, next_rid: int = 0, durable: bool = True) -> None:
        self._reports: dict[int, CommandReport] = {}
        self._next_rid = next_rid
        self._durable = durable
        self._durable_upto = next_rid - 1
        # rids that are durable and not yet sent on this connection, increasing; confirmed
        # ones are skipped lazily, so every operation is amortized O(1).
        self._to_send: deque[int] = deque()
        # command id -> rid of its unconfirmed final report
        self._finals: dict[UUID, int] = {}

    def __len__(self) -> int:
        return len(self._reports)

    @property
    def next_rid(self) -> int:
        """The rid the next report will get."""
        return self._next_rid

    def add(self, make: Callable[[int], CommandReport]) -> CommandReport:
        """Build a report with the next rid and keep it until confirmed."""
        report = make(self._next_rid)
        if report.rid != self._next_rid:
            raise ValueError("the report must carry the rid it was given")
        self._keep(report)
        self._next_rid += 1
        if not self._durable:
            self.mark_durable(report.rid)
        return report

    def restore(self, reports: Iterable[CommandReport], *, next_rid: int = 0) -> None:
        """Load the unconfirmed reports found on disk at start (durable already).

        ``next_rid`` is the stored rid counter: rids keep increasing across restarts
        even when every report was confirmed.

        Raises:
            ValueError: the reports are not in increasing rid order above those held.
        """
        for report in reports:
            if report.rid < self._next_rid:
                raise ValueError(f"restored rid {report.rid} is not above {self._next_rid - 1}")
            self._keep(report)
            self._next_rid = report.rid + 1
        self._next_rid = max(self._next_rid, next_rid)
        self.mark_durable(self._next_rid - 1)

    def mark_durable(self, rid: int) -> None:
        """Reports up to ``rid`` are on disk: they may be sent."""
        for durable in range(self._durable_upto + 1, rid + 1):
            if durable in self._reports:
                self._to_send.append(durable)
        self._durable_upto = max(self._durable_upto, rid)

    def confirm(self, rids: Iterable[int]) -> int:
        """Forget confirmed reports; unknown rids (confirmed twice) are ignored.

        Returns:
            how many reports were removed.
        """
        removed = 0
        for rid in rids:
            report = self._reports.pop(rid, None)
            if report is not None:
                removed += 1
                if isinstance(report, CommandFinished):
                    self._finals.pop(report.command_id, None)
        return removed

    def holds_final(self, command_id: UUID) -> bool:
        """Whether the final report of this command is still unconfirmed."""
        return command_id in self._finals

    def rewind(self) -> None:
        """Start sending again from the oldest unconfirmed report (a new connection)."""
        self._to_send = deque(rid for rid in self._reports if rid <= self._durable_upto)

    def has_unsent(self) -> bool:
        """Whether a durable report waits to be sent on this connection."""
        self._skip_confirmed()
        return bool(self._to_send)

    def unsent(self, limit: int | None = None) -> list[CommandReport]:
        """Durable reports not sent on this connection, oldest first, at most ``limit``."""
        self._skip_confirmed()
        out = []
        for rid in self._to_send:
            report = self._reports.get(rid)
            if report is not None:
                out.append(report)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def mark_sent(self, rid: int) -> None:
        """Everything up to ``rid`` was sent on this connection."""
        while self._to_send and self._to_send[0] <= rid:
            self._to_send.popleft()

    def _keep(self, report: CommandReport) -> None:
        self._reports[report.rid] = report
        if isinstance(report, CommandFinished):
            self._finals[report.command_id] = report.rid

    def _skip_confirmed(self) -> None:
        while self._to_send and self._to_send[0] not in self._reports:
            self._to_send.popleft()
