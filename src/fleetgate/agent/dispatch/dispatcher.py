"""The dispatcher: turns ``command.run`` messages into running commands and reports.

The backhaul reader calls :meth:`Dispatcher.on_command` synchronously: it must never block,
or confirmations queued behind it could not be read. The command is checked against the
inbox (a duplicate delivery is dropped), stamped ``delivered_at`` and put on a bounded
intake queue. :meth:`Dispatcher.run` owns every command task: it reports the delivery,
then waits for a slot under the concurrency limit (in arrival order) and runs it.

Before a command waits for its slot, the agent checks it itself
(:mod:`fleetgate.agent.policy.command_checks`, through :mod:`.gate`, which also writes
the command's audit lines); a refused one is finished at once. With a
spool, every step is on disk before it has consequences (:mod:`.reports`): the command is
recorded as running before its process is spawned. At start, commands a previous run
left running get an ``interrupted`` final report instead of running again; commands it
left queued (never started) run now, first, in their original order.

A command of a work session is stopped when the agent hears that the session ended
(``work_session.ended``): a running one as at a timeout (``error_phase`` ``stopped``,
code ``work_session_ended``), a queued one is refused when its slot comes
(:class:`~fleetgate.agent.exec.stopping.SessionStops`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from uuid import UUID

import structlog

from fleetgate.agent.audit import AuditLog
from fleetgate.agent.backhaul import Outbox
from fleetgate.agent.clock import utcnow
from fleetgate.agent.config.resources import LimitsConfig
from fleetgate.agent.dispatch.gate import CommandGate
from fleetgate.agent.dispatch.reports import CommandReports, MakeFinal, interrupted
from fleetgate.agent.exec.stopping import STOPPED_CODE, SessionStops, StopRequest
from fleetgate.agent.policy import GrantPolicy, GrantRefused
from fleetgate.agent.policy.command_checks import CheckedCommand, denied_report
from fleetgate.agent.spool import (
    Batch,
    CommandState,
    Eviction,
    FinishedEntry,
    Inbox,
    Snapshot,
    Spool,
)
from fleetgate.agent.sudo import SudoSessions
from fleetgate.agent.sudo.elevation import ElevationPolicy
from fleetgate.shared.protocol import (
    CommandFinished,
    CommandReport,
    CommandRun,
    ErrorMessage,
    GrantClaims,
    WorkSessionEnded,
)


__all__ = ["Dispatcher"]

log = structlog.get_logger(__name__)

_Intake = tuple[CommandRun, datetime] | UUID
"""A command to run, or the id of a finished command whose result must be sent again."""


class Dispatcher:
    """Accepts commands from the backhaul and runs them under the concurrency limit."""

    def __init__(
        self,
        limits: LimitsConfig,
        *,
        outbox: Outbox,
        grants: GrantPolicy,
        spool: Spool | None = None,
        inbox: Inbox | None = None,
        leftovers: Snapshot | None = None,
        audit: AuditLog | None = None,
        sudo: SudoSessions | None = None,
        elevation: ElevationPolicy | None = None,
        allowed_env: Collection[str] = (),
        on_session_ended: Callable[[WorkSessionEnded], object] | None = None,
    ) -> None:
        self._limits = limits
        self._on_session_ended = on_session_ended
        self._gate = CommandGate(
            grants=grants, elevation=elevation, allowed_env=allowed_env, audit=audit, sudo=sudo
        )
        self._reports = CommandReports(outbox, spool)
        self._inbox = inbox if inbox is not None else Inbox()
        self._intake: asyncio.Queue[_Intake] = asyncio.Queue(maxsize=limits.max_queued_commands)
        # asyncio.Semaphore wakes its waiters in FIFO order, so commands above the limit
        # start in the order they arrived.
        self._slots = asyncio.Semaphore(limits.max_concurrent_commands)
        self._waiting = 0  # accepted, delivery reported or being reported, no slot yet
        self._accepting = True
        self._idle = asyncio.Event()
        self._interrupted: list[tuple[UUID, CommandState]] = []
        self._resumed: list[CommandRun] = []
        self._stops = SessionStops()
        if leftovers is not None:
            self._inbox.restore(leftovers.active, leftovers.finished)
            self._resumed = [message for message, _ in leftovers.queued]
            resumable = {message.command_id for message in self._resumed}
            self._interrupted = [e for e in leftovers.active if e[0] not in resumable]
        if not self._inbox.active():
            self._idle.set()

    # -- called by the backhaul -------------------------------------------------------

    def running(self) -> list[UUID]:
        """Commands accepted and not finished (announced in ``hello``)."""
        return self._inbox.active()

    def on_command(self, message: CommandRun, delivered_at: datetime) -> ErrorMessage | None:
        """Accept a command without blocking, or say why not."""
        command_id = message.command_id
        ref = str(command_id)
        if not self._accepting:
            self._gate.audit("command.refused", message, reason="shutting_down")
            return ErrorMessage(code="shutting_down", message="the agent is stopping", ref=ref)
        state = self._inbox.state(command_id)
        item: _Intake = (message, delivered_at)
        if state is CommandState.FINISHED and self._reports.durable:
            if self._reports.holds_final(command_id):
                log.info("command.duplicate_dropped", command_id=ref, state=state.value)
                return None
            # Its result was confirmed, yet the control plane asks again: it lost it.
            item = command_id
        elif state is not None:
            log.info("command.duplicate_dropped", command_id=ref, state=state.value)
            return None
        try:
            if self._intake.qsize() + self._waiting >= self._limits.max_queued_commands:
                raise asyncio.QueueFull
            self._intake.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("command.refused_busy", command_id=ref)
            self._gate.audit("command.refused", message, reason="busy")
            return ErrorMessage(code="busy", message="too many queued commands", ref=ref)
        if state is None:
            self._inbox.accept(command_id)
            self._idle.clear()
            self._gate.audit("command.received", message, line=message.line)
        return None

    def on_work_session_ended(self, message: WorkSessionEnded) -> None:
        """Revoke at once whatever the work session allowed: sudo in running commands,
        and the commands themselves (stopped if running, refused if still queued)."""
        if self._gate.sudo is not None:
            self._gate.sudo.end_work_session(message.work_session)
        reason = f"stopped: its work session {message.work_session} ended ({message.status})"
        for command_id in self._stops.end(message.work_session, reason):
            log.info(
                "command.stopping",
                command_id=str(command_id),
                work_session=message.work_session,
                status=message.status,
            )
        if self._on_session_ended is not None:
            self._on_session_ended(message)

    # -- the owner of all command tasks -----------------------------------------------

    async def run(self) -> None:
        """Run until cancelled; cancelling it cancels (and so kills) every command."""
        await self._recover()
        async with asyncio.TaskGroup() as tg:
            resumed, self._resumed = self._resumed, []
            for message in resumed:
                # Delivered (and reported) before the restart; never started, so safe to run.
                log.info("command.resumed", command_id=str(message.command_id))
                self._waiting += 1
                checked = self._gate.check(message)
                tg.create_task(
                    self._execute(checked, None, self._stoppable(checked)),
                    name=f"command-{message.command_id}",
                )
            while True:
                item = await self._intake.get()
                if isinstance(item, UUID):
                    await self._reports.resend_final(item)
                    continue
                message, delivered_at = item
                checked = self._gate.check(message)
                stop = self._stoppable(checked)
                name = f"command-{message.command_id}"
                # A free slot and nobody ahead: the command starts at once (unless its
                # work session already ended: refused on the way below).
                ended = stop is not None and stop.stopped
                if (
                    checked.refused is None
                    and not ended
                    and self._waiting == 0
                    and not self._slots.locked()
                ):
                    await self._slots.acquire()  # free: returns without suspending
                    self._inbox.advance(message.command_id, CommandState.RUNNING)
                    recorded = self._reports.record_running(message, delivered_at)
                    tg.create_task(self._start_now(checked, stop, *recorded), name=name)
                    continue
                # Not waiting for the disk here: the next command's delivery joins the
                # same commit, so a burst of commands costs one write, not one each.
                delivered = await self._reports.delivered(message, delivered_at)
                self._waiting += 1
                tg.create_task(self._execute(checked, delivered, stop), name=name)

    def stop_accepting(self) -> None:
        """Refuse new commands from now on (graceful shutdown)."""
        self._accepting = False

    async def wait_idle(self) -> None:
        """Wait until no accepted command is queued or running."""
        await self._idle.wait()

    def _stoppable(self, checked: CheckedCommand) -> StopRequest | None:
        """The stop switch of an accepted command of a work session (None otherwise),
        registered until the command finishes."""
        message = checked.message
        if checked.refused is not None or message.work_session is None:
            return None
        return self._stops.register(message.work_session, message.command_id)

    def _forget_stop(self, message: CommandRun) -> None:
        if message.work_session is not None:
            self._stops.forget(message.work_session, message.command_id)

    async def _start_now(
        self,
        checked: CheckedCommand,
        stop: StopRequest | None,
        recorded: Awaitable[None],
        delivered_at: datetime | None,
    ) -> None:
        """Run a command that got its slot at arrival, once it is recorded as running."""
        message = checked.message
        with structlog.contextvars.bound_contextvars(
            command_id=str(message.command_id), user=message.username
        ):
            try:
                await recorded
            except BaseException:
                self._slots.release()
                self._forget_stop(message)
                raise
            await self._run(message, checked.claims, stop, delivered_at)

    async def _execute(
        self, checked: CheckedCommand, delivered: Awaitable[None] | None, stop: StopRequest | None
    ) -> None:
        try:
            await self._execute_checked(checked, delivered, stop)
        finally:
            self._forget_stop(checked.message)

    async def _execute_checked(
        self, checked: CheckedCommand, delivered: Awaitable[None] | None, stop: StopRequest | None
    ) -> None:
        refused, message = checked.refused, checked.message
        command_id = message.command_id
        with structlog.contextvars.bound_contextvars(
            command_id=str(command_id), user=message.username
        ):
            try:
                # Deliveries become durable in arrival order and their tasks resume in
                # that order, so the FIFO semaphore still starts commands as they came.
                if delivered is not None:
                    await delivered
                if refused is None:
                    await self._slots.acquire()
                    if stop is not None and stop.stopped:
                        self._slots.release()
                        refused = GrantRefused(STOPPED_CODE, stop.reason)
            finally:
                self._waiting -= 1
            if refused is not None:
                log.warning("command.denied", code=refused.code, reason=refused.detail)
                self._gate.audit(
                    "command.refused", message, reason=refused.code, detail=refused.detail
                )
                # Never started: the command goes from queued straight to finished.
                denied = refused
                await self._finish(
                    command_id, lambda rid: denied_report(rid, command_id, denied, utcnow())
                )
                return
            try:
                self._inbox.advance(command_id, CommandState.RUNNING)
                await self._reports.running(command_id)
            except BaseException:
                self._slots.release()
                raise
            await self._run(message, checked.claims, stop)

    async def _run(
        self,
        message: CommandRun,
        claims: GrantClaims | None,
        stop: StopRequest | None,
        delivered_at: datetime | None = None,
    ) -> None:
        """Run a command recorded as running (its slot taken), then finish it.

        ``stop``: its work session's stop switch. ``delivered_at``: the delivery is still
        to be reported, with the start."""
        command_id = message.command_id
        from fleetgate.agent.exec import run_command  # loads with the first command

        try:
            outcome = await run_command(
                message,
                self._limits,
                on_started=lambda at: self._started(message, at, delivered_at),
                on_output=lambda seq, data: self._reports.output(command_id, seq, data),
                track=self._gate.tracker(message, claims),
                stop=stop,
            )
        finally:
            self._slots.release()
            self._forget_stop(message)
        self._gate.audit(
            "command.finished",
            message,
            exit_code=outcome.exit_code,
            success=outcome.success,
            error_phase=outcome.error_phase,
            elapsed_time=outcome.elapsed_time,
        )
        await self._finish(command_id, lambda rid: outcome.final_report(rid, command_id))

    async def _finish(self, command_id: UUID, make: MakeFinal) -> None:
        """Put the final report and mark the command finished, in one transaction."""
        evictions: list[Eviction] = []

        def record(batch: Batch, report: CommandReport) -> None:
            assert isinstance(report, CommandFinished)
            now = utcnow()
            evicted = self._inbox.finish(
                command_id, at=now.timestamp(), size=len(report.result), now=now.timestamp()
            )
            batch.finished.append(FinishedEntry(command_id, now, report))
            batch.forgotten.extend(evicted.forgotten)
            evictions.append(evicted)

        await self._reports.final(make, record)
        for eviction in evictions:
            _log_eviction(eviction)
        if not self._inbox.active():
            self._idle.set()

    async def _recover(self) -> None:
        """Apply the retention to what a previous run left, and give every command it
        left unfinished its final report."""
        eviction = self._inbox.expire(utcnow().timestamp())
        self._reports.forget(eviction.forgotten)
        _log_eviction(eviction)
        leftovers, self._interrupted = self._interrupted, []
        at = utcnow()
        for command_id, state in leftovers:
            log.warning("command.interrupted", command_id=str(command_id), state=state.value)
            await self._finish(command_id, functools.partial(interrupted, command_id, state, at))

    async def _started(
        self, message: CommandRun, acked_at: datetime, delivered_at: datetime | None
    ) -> None:
        self._gate.audit("command.started", message)
        await self._reports.started(message.command_id, acked_at, delivered_at)


def _log_eviction(eviction: Eviction) -> None:
    if eviction:
        log.info(
            "spool.inbox_pruned",
            forgotten=len(eviction.forgotten),
            reasons=dict(eviction.reasons),
        )
