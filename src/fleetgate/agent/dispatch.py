"""The dispatcher: turns ``command.run`` messages into running commands and reports.

The backhaul reader calls :meth:`Dispatcher.on_command` synchronously: it must never block,
or confirmations queued behind it could not be read. The command is checked against the
inbox (a duplicate delivery is dropped), stamped ``delivered_at`` and put on a bounded
intake queue. :meth:`Dispatcher.run` owns every command task: it reports the delivery,
then waits for a slot under the concurrency limit (in arrival order) and runs it.

With a spool, every step is on disk before it has consequences: the command is recorded
as running before its process is spawned, a report is written before it is sent, and the
final report is written with the inbox row that says it finished. A command that finds a
free slot is written as running in one commit (its delivery report then goes with its
start report); one that must wait is written with its delivery report, then as running
when it gets its slot. Those commits are fsynced before the agent goes on (never run
twice: a command possibly started is never started again after a power cut). The
reports of a command durably running (start, output, final report, with the inbox row
that says it finished) are sent once written, before their fsync, which comes with the
next fsynced commit (``sync_first=False``, see :mod:`fleetgate.agent.spool.writer`): a SIGKILL of the agent
loses nothing (the page cache keeps them), a power cut after the final report reached
the control plane restarts the agent with the command running, reported
``interrupted``, and the control plane keeps the first final result. A short command so
waits for one fsync, before its process starts.
At start, commands a previous run left running get an ``interrupted`` final report
instead of running again; commands it left queued (never started) run now, first, in
their original order.

A command of a work session is stopped when the agent hears that the session ended
(``work_session.ended``): a running one as at a timeout (``error_phase`` ``stopped``,
code ``work_session_ended``), a queued one is refused when its slot comes.
"""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from time import time
from typing import TYPE_CHECKING
from uuid import UUID

import structlog

from fleetgate.agent.audit import AuditLog
from fleetgate.agent.backhaul import Outbox
from fleetgate.agent.clock import utcnow
from fleetgate.agent.config import LimitsConfig
from fleetgate.agent.exec.stopping import STOPPED_CODE, StopRequest
from fleetgate.agent.policy import GrantPolicy, GrantRefused
from fleetgate.agent.spool import (
    Batch,
    CommandState,
    Eviction,
    FinishedEntry,
    Inbox,
    Snapshot,
    Spool,
    interrupted_report,
)
from fleetgate.agent.sudo import SudoSessions
from fleetgate.agent.sudo.elevation import ElevationPolicy
from fleetgate.shared.envpolicy import denied_env_names
from fleetgate.shared.protocol import (
    CommandAcked,
    CommandDelivered,
    CommandFinished,
    CommandOutput,
    CommandReport,
    CommandRun,
    ErrorMessage,
    GrantClaims,
    WorkSessionEnded,
    content_digest,
)


if TYPE_CHECKING:
    from fleetgate.agent.exec import CommandOutcome


__all__ = ["Dispatcher"]

log = structlog.get_logger(__name__)

_Intake = tuple[CommandRun, datetime] | UUID
"""A command to run, or the id of a finished command whose result must be sent again."""

_MakeFinal = Callable[[int], CommandFinished]

_Checked = tuple[GrantRefused | None, GrantClaims | None, CommandRun]
"""The local checks' outcome: the refusal (if any), the verified claims, the command to run."""


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
        self._allowed_env = frozenset(allowed_env)
        self._on_session_ended = on_session_ended
        self._grants = grants
        self._sudo = sudo
        self._elevation = elevation or ElevationPolicy()
        self._audit = audit
        self._outbox = outbox
        self._spool = spool
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
        # work session -> its commands accepted and not finished, each with its stop switch
        self._stops: dict[str, dict[UUID, StopRequest]] = {}
        # work sessions that ended lately -> why: a command of one still on its way to the
        # intake when the end arrived is stopped before it starts
        self._ended: OrderedDict[str, str] = OrderedDict()
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
            self._audit_event("command.refused", message, reason="shutting_down")
            return ErrorMessage(code="shutting_down", message="the agent is stopping", ref=ref)
        state = self._inbox.state(command_id)
        item: _Intake = (message, delivered_at)
        if state is CommandState.FINISHED and self._spool is not None:
            if self._outbox.holds_final(command_id):
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
            self._audit_event("command.refused", message, reason="busy")
            return ErrorMessage(code="busy", message="too many queued commands", ref=ref)
        if state is None:
            self._inbox.accept(command_id)
            self._idle.clear()
            self._audit_event("command.received", message, line=message.line)
        return None

    def on_work_session_ended(self, message: WorkSessionEnded) -> None:
        """Revoke at once whatever the work session allowed: sudo in running commands,
        and the commands themselves (stopped if running, refused if still queued)."""
        if self._sudo is not None:
            self._sudo.end_work_session(message.work_session)
        reason = f"stopped: its work session {message.work_session} ended ({message.status})"
        self._ended[message.work_session] = reason
        while len(self._ended) > ENDED_SESSIONS_KEPT:
            self._ended.popitem(last=False)
        stops = self._stops.get(message.work_session, {})
        for command_id, stop in stops.items():
            log.info(
                "command.stopping",
                command_id=str(command_id),
                work_session=message.work_session,
                status=message.status,
            )
            stop.stop(reason)
        if self._on_session_ended is not None:
            self._on_session_ended(message)

    def _audit_event(self, event: str, message: CommandRun, **fields: object) -> None:
        """One audit line: the command, the account it runs as, who asked for it and
        under which work session (``claims``'s when verified, else the message's)."""
        if self._audit is not None:
            requester = message.requested_by
            self._audit.record(
                event,
                command_id=str(message.command_id),
                user=message.username,
                group=message.groupname,
                requested_by=None if requester is None else requester.model_dump(),
                work_session=message.work_session,
                **fields,
            )

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
                checked = self._refusal(message)
                tg.create_task(
                    self._execute(checked, None, self._stoppable(checked)),
                    name=f"command-{message.command_id}",
                )
            while True:
                item = await self._intake.get()
                if isinstance(item, UUID):
                    await self._resend_final(item)
                    continue
                message, delivered_at = item
                checked = self._refusal(message)
                stop = self._stoppable(checked)
                name = f"command-{message.command_id}"
                # A free slot and nobody ahead: the command starts at once (unless its
                # work session already ended: refused on the way below).
                ended = stop is not None and stop.stopped
                if (
                    checked[0] is None
                    and not ended
                    and self._waiting == 0
                    and not self._slots.locked()
                ):
                    await self._slots.acquire()  # free: returns without suspending
                    self._inbox.advance(message.command_id, CommandState.RUNNING)
                    recorded = self._record_running(message, delivered_at)
                    tg.create_task(self._start_now(checked, stop, *recorded), name=name)
                    continue
                # Not waiting for the disk here: the next command's delivery joins the
                # same commit, so a burst of commands costs one write, not one each.
                delivered = await self._report_delivered(message, delivered_at)
                self._waiting += 1
                tg.create_task(self._execute(checked, delivered, stop), name=name)

    def stop_accepting(self) -> None:
        """Refuse new commands from now on (graceful shutdown)."""
        self._accepting = False

    async def wait_idle(self) -> None:
        """Wait until no accepted command is queued or running."""
        await self._idle.wait()

    def _record_running(
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

    def _stoppable(self, checked: _Checked) -> StopRequest | None:
        """The stop switch of an accepted command of a work session (None otherwise),
        registered until the command finishes."""
        refused, _, message = checked
        if refused is not None or message.work_session is None:
            return None
        stop = StopRequest()
        ended = self._ended.get(message.work_session)
        if ended is not None:
            stop.stop(ended)
        self._stops.setdefault(message.work_session, {})[message.command_id] = stop
        return stop

    def _forget_stop(self, message: CommandRun) -> None:
        stops = self._stops.get(message.work_session or "")
        if stops is not None:
            stops.pop(message.command_id, None)
            if not stops:
                del self._stops[message.work_session or ""]

    async def _start_now(
        self,
        checked: _Checked,
        stop: StopRequest | None,
        recorded: Awaitable[None],
        delivered_at: datetime | None,
    ) -> None:
        """Run a command that got its slot at arrival, once it is recorded as running."""
        _, claims, message = checked
        with structlog.contextvars.bound_contextvars(
            command_id=str(message.command_id), user=message.username
        ):
            try:
                await recorded
            except BaseException:
                self._slots.release()
                self._forget_stop(message)
                raise
            await self._run(message, claims, stop, delivered_at)

    async def _execute(
        self, checked: _Checked, delivered: Awaitable[None] | None, stop: StopRequest | None
    ) -> None:
        try:
            await self._execute_checked(checked, delivered, stop)
        finally:
            self._forget_stop(checked[2])

    async def _execute_checked(
        self, checked: _Checked, delivered: Awaitable[None] | None, stop: StopRequest | None
    ) -> None:
        refused, claims, message = checked
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
                self._audit_event(
                    "command.refused", message, reason=refused.code, detail=refused.detail
                )
                # Never started: the command goes from queued straight to finished.
                denied = refused
                await self._finish(command_id, lambda rid: _denied(rid, command_id, denied))
                return
            try:
                self._inbox.advance(command_id, CommandState.RUNNING)
                if self._spool is not None:
                    # On disk before the process exists: after a crash the command is
                    # known to have possibly run, and is never started again.
                    await self._spool.commit(
                        lambda b: b.states.append((command_id, CommandState.RUNNING))
                    )
            except BaseException:
                self._slots.release()
                raise
            await self._run(message, claims, stop)

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
                on_output=lambda seq, data: self._report_output(command_id, seq, data),
                track=self._tracker(message, claims),
                stop=stop,
            )
        finally:
            self._slots.release()
            self._forget_stop(message)
        self._audit_event(
            "command.finished",
            message,
            exit_code=outcome.exit_code,
            success=outcome.success,
            error_phase=outcome.error_phase,
            elapsed_time=outcome.elapsed_time,
        )
        await self._finish(command_id, lambda rid: _finished(rid, command_id, outcome))

    def _refusal(self, message: CommandRun) -> _Checked:
        """Local enforcement: the grant is checked here, whatever the control plane did.

        Returns the refusal (if any), the verified claims, and the command to run: an
        elevated one (``sudo``) runs its pattern-checked line with the command's
        absolute path, so the shell finds exactly the program that was checked.
        """
        scope = "sudo" if message.sudo else "command"
        try:
            denied_env = denied_env_names(message.env, self._allowed_env)
            if denied_env:
                # Whatever the control plane let through: PATH or LD_PRELOAD from a
                # request would choose the program that runs.
                raise GrantRefused(
                    "env_not_allowed",
                    f"env: {denied_env[0]} may not be set by a request "
                    "(allow it in the agent's exec.allowed_env)",
                )
            claims = self._grants.check(
                message.grant,
                command_id=message.command_id,
                scope=scope,
                now=time(),
                content=content_digest(message),  # before elevation rewrites the line
            )
            if claims is not None and claims.work_session is not None:
                # The verified grant names the session, whatever the message said.
                message = message.model_copy(update={"work_session": claims.work_session})
            if message.sudo:
                line = self._elevation.check(message, claims)
                self._audit_event(
                    "sudo.decision", message, allowed=True, code="allowed", via="api", line=line
                )
                message = message.model_copy(update={"line": line})
        except GrantRefused as refused:
            if message.sudo:
                self._audit_event(
                    "sudo.decision",
                    message,
                    allowed=False,
                    code=refused.code,
                    via="api",
                    line=message.line,
                )
            return refused, None, message
        return None, claims, message

    def _tracker(
        self, message: CommandRun, claims: GrantClaims | None
    ) -> Callable[[int], Callable[[], None]] | None:
        """Registers the command's process session for sudo mediation while it runs."""
        sudo = self._sudo
        if sudo is None:
            return None
        label = f"command {message.command_id}"

        def track(pid: int) -> Callable[[], None]:
            # start_new_session: the command's pid is its process session id.
            sudo.register(pid, claims, label=label)
            return lambda: sudo.unregister(pid)

        return track

    async def _finish(self, command_id: UUID, make: _MakeFinal) -> None:
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

        if self._spool is None:
            record(Batch(), await self._outbox.put(make))
        else:
            # Its inbox row said queued or running on disk before: the report may go out
            # before its fsync.
            await self._outbox.put(make, with_change=record, sync_first=False)
        for eviction in evictions:
            _log_eviction(eviction)
        if not self._inbox.active():
            self._idle.set()

    async def _recover(self) -> None:
        """Apply the retention to what a previous run left, and give every command it
        left unfinished its final report."""
        eviction = self._inbox.expire(utcnow().timestamp())
        if eviction and self._spool is not None:
            self._spool.stage(lambda batch: batch.forgotten.extend(eviction.forgotten))
        _log_eviction(eviction)
        leftovers, self._interrupted = self._interrupted, []
        at = utcnow()
        for command_id, state in leftovers:
            log.warning("command.interrupted", command_id=str(command_id), state=state.value)
            await self._finish(command_id, functools.partial(_interrupted, command_id, state, at))

    async def _resend_final(self, command_id: UUID) -> None:
        assert self._spool is not None
        stored = await self._spool.final_report(command_id)
        if stored is None:
            log.warning("command.result_forgotten", command_id=str(command_id))
            return
        await self._outbox.put(lambda rid: stored.model_copy(update={"rid": rid}))
        log.info("command.result_resent", command_id=str(command_id))

    async def _report_delivered(
        self, message: CommandRun, delivered_at: datetime
    ) -> Awaitable[None]:
        """Queue the delivery report with the inbox row; the awaitable says when durable."""
        command_id = message.command_id
        _, durable = await self._outbox.add(
            lambda rid: CommandDelivered(rid=rid, command_id=command_id, delivered_at=delivered_at),
            with_change=lambda batch, _: batch.accepted.append((message, delivered_at)),
        )
        return durable

    # The command does not wait for these to reach the disk (only for room in the
    # outbox): the outbox never sends a report before it is written anyway, and a crash
    # (or a power cut before the fsync) leaves the command running in the inbox, hence
    # interrupted. Its inbox row said running on disk before the process existed.

    async def _started(
        self, message: CommandRun, acked_at: datetime, delivered_at: datetime | None
    ) -> None:
        self._audit_event("command.started", message)
        command_id = message.command_id
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

    async def _report_output(self, command_id: UUID, seq: int, data: str) -> None:
        await self._outbox.add(
            lambda rid: CommandOutput(rid=rid, command_id=command_id, seq=seq, data=data),
            sync_first=False,
        )


async def _second(pending: Awaitable[tuple[CommandReport, Awaitable[None]]]) -> None:
    """Await an ``Outbox.add`` and then its durability."""
    _, durable = await pending
    await durable


def _log_eviction(eviction: Eviction) -> None:
    if eviction:
        log.info(
            "spool.inbox_pruned",
            forgotten=len(eviction.forgotten),
            reasons=dict(eviction.reasons),
        )


def _interrupted(command_id: UUID, state: CommandState, at: datetime, rid: int) -> CommandFinished:
    return interrupted_report(rid, command_id, state, at=at)


ENDED_SESSIONS_KEPT = 1024
"""Ended work sessions remembered (the oldest forgotten first): enough for any command
of one that was in flight when its end arrived."""

ACK_WRITE_DELAY = 0.05
"""Seconds a command's start (and delivery) reports may wait for its output or final
report to be written with them (one fsync instead of two for a short command)."""

DENIED_EXIT_CODE = 126
"""Exit code of a command the agent refused to run (the shell's "cannot execute")."""


def _denied(rid: int, command_id: UUID, refused: GrantRefused) -> CommandFinished:
    return CommandFinished(
        rid=rid,
        command_id=command_id,
        handled_at=utcnow(),
        elapsed_time=0.0,
        exit_code=DENIED_EXIT_CODE,
        success=False,
        result="",
        error_phase="denied",
        message=str(refused),
        code=refused.code[:64],
    )


def _finished(rid: int, command_id: UUID, outcome: CommandOutcome) -> CommandFinished:
    return CommandFinished(
        rid=rid,
        command_id=command_id,
        handled_at=outcome.handled_at,
        elapsed_time=outcome.elapsed_time,
        exit_code=outcome.exit_code,
        success=outcome.success,
        result=outcome.result,
        truncated=outcome.truncated,
        output_bytes=outcome.output_bytes,
        error_phase=outcome.error_phase,
        message=outcome.message,
        code=outcome.code,
    )
