"""Reports not yet confirmed by the control plane, in the order they were made.

Pure bookkeeping, no I/O: the asyncio outbox wraps it. Each report gets a report id
(``rid``) in increasing order. A report stays here until a ``confirm`` names its rid; a
send cursor remembers how far the current connection got, and a new connection starts
again from the oldest unconfirmed report, so nothing is lost across reconnects and the
control plane, which stores reports idempotently, sees each at least once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from agent.protocol import CommandReport


__all__ = ["PendingReports"]


class PendingReports:
    """Unconfirmed reports keyed by rid, plus the send cursor of the current connection."""

    def __init__(self, *, next_rid: int = 0) -> None:
        self._reports: dict[int, CommandReport] = {}
        self._next_rid = next_rid
        self._sent_upto = -1

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
        self._reports[report.rid] = report
        self._next_rid += 1
        return report

    def confirm(self, rids: Iterable[int]) -> int:
        """Forget confirmed reports; unknown rids (confirmed twice) are ignored.

        Returns:
            how many reports were removed.
        """
        removed = 0
        for rid in rids:
            if self._reports.pop(rid, None) is not None:
                removed += 1
        return removed

    def rewind(self) -> None:
        """Start sending again from the oldest unconfirmed report (a new connection)."""
        self._sent_upto = -1

    def has_unsent(self) -> bool:
        """Whether any report lies after the send cursor (O(1))."""
        # rids are inserted in increasing order and never re-inserted, so the last key
        # is the largest.
        return bool(self._reports) and next(reversed(self._reports)) > self._sent_upto

    def unsent(self, limit: int | None = None) -> list[CommandReport]:
        """Reports after the send cursor, oldest first, at most ``limit`` of them."""
        # dicts keep insertion order, and rids are inserted in increasing order.
        out = []
        for rid, report in self._reports.items():
            if rid > self._sent_upto:
                out.append(report)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def mark_sent(self, rid: int) -> None:
        """Advance the send cursor past ``rid``."""
        self._sent_upto = max(self._sent_upto, rid)
