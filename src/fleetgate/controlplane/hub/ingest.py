"""One writer for every agent's reports: many sessions' batches, one transaction.

Each agent session hands its batch of reports to :meth:`ReportWriter.store` and waits for
the outcome before it confirms them (so a report is confirmed only once it is stored).
The writer task takes every batch waiting (up to ``max_reports`` reports) and stores them
in one transaction: when 5,000 agents answer a fan-out at once, that is a few dozen
transactions instead of 5,000 round trips through the database thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from fleetgate.controlplane.store import Database, reports as reports_store
from fleetgate.controlplane.store.reports import ReportOutcome
from fleetgate.shared.protocol import CommandReport


__all__ = ["ReportWriter", "WriterClosed"]

log = structlog.get_logger("fleetgate.controlplane.hub")

MAX_WAITING = 20_000
"""Batches waiting for the writer at most; a session waits for room beyond this."""


class WriterClosed(ConnectionError):
    """The writer stopped (shutdown) before the batch was stored."""


@dataclass
class _Batch:
    server_id: str
    reports: Sequence[CommandReport]
    last_seen_at: int
    done: asyncio.Future[ReportOutcome]


class ReportWriter:
    """Batches agent sessions' reports into shared transactions (see the module doc)."""

    def __init__(self, db: Database, max_reports: int = 5000) -> None:
        self.db = db
        self.max_reports = max_reports
        self._queue: asyncio.Queue[_Batch] = asyncio.Queue(maxsize=MAX_WAITING)
        self._closed = False

    async def store(
        self, server_id: str, reports: Sequence[CommandReport], *, last_seen_at: int
    ) -> ReportOutcome:
        """Store one session's reports (with the others waiting); their outcome.

        Raises:
            WriterClosed: the control plane is shutting down.
        """
        if self._closed:
            raise WriterClosed("the report writer is stopped")
        done: asyncio.Future[ReportOutcome] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Batch(server_id, reports, last_seen_at, done))
        return await done

    async def run(self) -> None:
        """Write batches until cancelled; then fail whatever is still waiting."""
        try:
            while True:
                batches = [await self._queue.get()]
                count = len(batches[0].reports)
                while count < self.max_reports and not self._queue.empty():
                    batch = self._queue.get_nowait()
                    batches.append(batch)
                    count += len(batch.reports)
                await self._write(batches)
        finally:
            self._closed = True
            while not self._queue.empty():
                batch = self._queue.get_nowait()
                if not batch.done.done():
                    batch.done.set_exception(WriterClosed("the report writer stopped"))

    async def _write(self, batches: list[_Batch]) -> None:
        items = [(b.server_id, b.reports, b.last_seen_at) for b in batches]
        try:
            # A final result erases its command's env: the WAL is scrubbed at once.
            stored = await self.db.write_erasing(reports_store.store_report_batches, items)
            outcomes = stored.outcomes
        except asyncio.CancelledError:
            for batch in batches:
                if not batch.done.done():
                    batch.done.set_exception(WriterClosed("the report writer stopped"))
            raise
        except Exception as exc:  # noqa: BLE001 - each waiting session gets the failure
            if len(batches) > 1:
                # One bad batch must not fail the others: store them one by one.
                for batch in batches:
                    await self._write([batch])
                return
            log.error(
                "report.batch_failed", server_id=batches[0].server_id, error=type(exc).__name__
            )
            if not batches[0].done.done():
                batches[0].done.set_exception(exc)
            return
        for batch, outcome in zip(batches, outcomes, strict=True):
            if not batch.done.done():  # the session may have been cancelled meanwhile
                batch.done.set_result(outcome)
