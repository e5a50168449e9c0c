"""A command's reports on their way to the control plane, and with a spool to the disk first.

Every step is on disk before it has consequences: the command is recorded as running
before its process is spawned, a report is written before it is sent, and the final
report is written with the inbox row that says it finished. A command that finds a free
slot is written as running in one commit (its delivery report then goes with its start
report, :meth:`CommandReports.record_running`); one that must wait is written with its
delivery report (:meth:`CommandReports.delivered`), then as running when it gets its slot
(:meth:`CommandReports.running`). Those commits are fsynced before the agent goes on (never
run twice: a command possibly started is never started again after a power cut).

The reports of a command durably running (start, output, final report, with the inbox row
that says it finished) are sent once written, before their fsync, which comes with the
next fsynced commit (``sync_first=False``, see :mod:`fleetgate.agent.spool.writer`): a
SIGKILL of the agent loses nothing (the page cache keeps them), a power cut after the
final report reached the control plane restarts the agent with the command running,
reported ``interrupted``, and the control plane keeps the first final result. A short
command so waits for one fsync, before its process starts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from uuid import UUID

import structlog

from fleetgate.agent.backhaul import Outbox
from fleetgate.agent.spool import Batch, CommandState, Spool, interrupted_report
from fleetgate.shared.protocol import (
    CommandAcked,
    CommandDelivered,
    CommandFinished,
    CommandOutput,
    CommandReport,
    CommandRun,
)


__all__ = ["ACK_WRITE_DELAY", "CommandReports", "MakeFinal", "interrupted"]

log = structlog.get_logger(__name__)

ACK_WRITE_DELAY = 0.05
"""Seconds a command's start (and delivery) reports may wait for its output or final
report to be written with them (one fsync instead of two for a short command)."""

MakeFinal = Callable[[int], CommandFinished]
"""Builds a final report once its report id is known."""

RecordFinal = Callable[[Batch, CommandReport], None]
"""Stages, in the final report's own commit, the inbox row that says it finished."""


class CommandReports:
    """Puts a command's reports in the outbox, with the spool's rows they depend on."""

    def __init__(self, outbox: Outbox, spool: Spool | None) -> None:
        self._outbox = outbox
        self._spool = spool

    @property
    def durable(self) -> bool:
        """Whether reports and inbox rows are kept on disk (a spool)."""
        return self._spool is not None

    def holds_final(self, command_id: UUID) -> bool:
        """Whether the command's final report still waits for its confirmation."""
        return self._outbox.holds_final(command_id)

    def record_running(
        self, message: CommandRun, delivered_at: datetime
    ) -> tuple[Awaitable[None], datetime | None]:
        """Stage the inbox row of a command that starts at once, already running: one
        commit instead of one for the delivery and one for the running state.

        Returns the awaitable of that commit and, with a spool, the delivery time still
        to report: the delivery report waits for the start and goes with it, so a
        short command's delivery, start and end reach the control plane in one write.
        After a crash between the two, the inbox says running (the command is never
        started again) and the control plane, which never saw the delivery, gets the
        interrupted result like any other. Without a spool, it is reported at once.
        """
        command_id = message.command_id
        if self._spool is None:
            report = self._outbox.add(
                lambda rid: CommandDelivered(
                    rid=rid, command_id=command_id, delivered_at=delivered_at
                )
            )
            return _second(report), None

        def change(batch: Batch) -> None:
            batch.accepted.append((message, delivered_at))
            batch.states.append((command_id, CommandState.RUNNING))

        return self._spool.commit(change), delivered_at

    async def delivered(self, message: CommandRun, delivered_at: datetime) -> Awaitable[None]:
        """Queue the delivery report with the inbox row; the awaitable says when durable."""
        command_id = message.command_id
        _, durable = await self._outbox.add(
            lambda rid: CommandDelivered(rid=rid, command_id=command_id, delivered_at=delivered_at),
            with_change=lambda batch, _: batch.accepted.append((message, delivered_at)),
        )
        return durable

    async def running(self, command_id: UUID) -> None:
        """Record a queued command as running, on disk before its process exists: after a
        crash it is known to have possibly run, and is never started again."""
        if self._spool is not None:
            await self._spool.commit(lambda b: b.states.append((command_id, CommandState.RUNNING)))

    # The command does not wait for these to reach the disk (only for room in the
    # outbox): the outbox never sends a report before it is written anyway, and a crash
    # (or a power cut before the fsync) leaves the command running in the inbox, hence
    # interrupted. Its inbox row said running on disk before the process existed.

    async def started(
        self, command_id: UUID, acked_at: datetime, delivered_at: datetime | None
    ) -> None:
        """Report the start (and the delivery still to report, see :meth:`record_running`)."""
        if delivered_at is not None:
            await self._outbox.add(
                lambda rid: CommandDelivered(
                    rid=rid, command_id=command_id, delivered_at=delivered_at
                ),
                within=ACK_WRITE_DELAY,
                sync_first=False,
            )
        # A short command's final report takes these along in its commit.
        await self._outbox.add(
            lambda rid: CommandAcked(rid=rid, command_id=command_id, acked_at=acked_at),
            within=ACK_WRITE_DELAY,
            sync_first=False,
        )

    async def output(self, command_id: UUID, seq: int, data: str) -> None:
        """Report a chunk of output."""
        await self._outbox.add(
            lambda rid: CommandOutput(rid=rid, command_id=command_id, seq=seq, data=data),
            sync_first=False,
        )

    async def final(self, make: MakeFinal, record: RecordFinal) -> None:
        """Put the final report, with ``record``'s rows in the same transaction."""
        if self._spool is None:
            record(Batch(), await self._outbox.put(make))
        else:
            # Its inbox row said queued or running on disk before: the report may go out
            # before its fsync.
            await self._outbox.put(make, with_change=record, sync_first=False)

    def forget(self, forgotten: list[UUID]) -> None:
        """Stage the removal of finished commands the retention dropped from the inbox."""
        if forgotten and self._spool is not None:
            self._spool.stage(lambda batch: batch.forgotten.extend(forgotten))

    async def resend_final(self, command_id: UUID) -> None:
        """Send a finished command's stored result again (the control plane lost it)."""
        assert self._spool is not None
        stored = await self._spool.final_report(command_id)
        if stored is None:
            log.warning("command.result_forgotten", command_id=str(command_id))
            return
        await self._outbox.put(lambda rid: stored.model_copy(update={"rid": rid}))
        log.info("command.result_resent", command_id=str(command_id))


def interrupted(command_id: UUID, state: CommandState, at: datetime, rid: int) -> CommandFinished:
    """The final report of a command a previous run left ``state`` (``functools.partial``)."""
    return interrupted_report(rid, command_id, state, at=at)


async def _second(pending: Awaitable[tuple[CommandReport, Awaitable[None]]]) -> None:
    """Await an ``Outbox.add`` and then its durability."""
    _, durable = await pending
    await durable
