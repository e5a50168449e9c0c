"""The dispatcher: turns ``command.run`` messages into running commands and reports.

The backhaul reader calls :meth:`Dispatcher.on_command` synchronously: it must never block,
or confirmations queued behind it could not be read. The command is checked against the
inbox (a duplicate delivery is dropped), stamped ``delivered_at`` and put on a bounded
intake queue. :meth:`Dispatcher.run` owns every command task: it reports the delivery,
then waits for a slot under the concurrency limit (in arrival order) and runs it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from time import time
from uuid import UUID

import structlog

from agent.backhaul import Outbox
from agent.clock import utcnow
from agent.config import LimitsConfig
from agent.exec import CommandOutcome, run_command
from agent.policy import GrantPolicy, GrantRefused
from agent.protocol import (
    CommandAcked,
    CommandDelivered,
    CommandFinished,
    CommandOutput,
    CommandRun,
    ErrorMessage,
)
from agent.spool import CommandState, Inbox


__all__ = ["Dispatcher"]

log = structlog.get_logger(__name__)


class Dispatcher:
    """Accepts commands from the backhaul and runs them under the concurrency limit."""

    def __init__(
        self,
        limits: LimitsConfig,
        *,
        outbox: Outbox,
        grants: GrantPolicy,
        inbox: Inbox | None = None,
    ) -> None:
        self._limits = limits
        self._grants = grants
        self._outbox = outbox
        self._inbox = inbox or Inbox()
        self._intake: asyncio.Queue[tuple[CommandRun, datetime]] = asyncio.Queue(
            maxsize=limits.max_queued_commands
        )
        # asyncio.Semaphore wakes its waiters in FIFO order, so commands above the limit
        # start in the order they arrived.
        self._slots = asyncio.Semaphore(limits.max_concurrent_commands)
        self._accepting = True
        self._idle = asyncio.Event()
        self._idle.set()

    # -- called by the backhaul -------------------------------------------------------

    def running(self) -> list[UUID]:
        """Commands accepted and not finished (announced in ``hello``)."""
        return self._inbox.active()

    def on_command(self, message: CommandRun, delivered_at: datetime) -> ErrorMessage | None:
        """Accept a command without blocking, or say why not."""
        ref = str(message.command_id)
        if not self._accepting:
            return ErrorMessage(code="shutting_down", message="the agent is stopping", ref=ref)
        if self._inbox.state(message.command_id) is not None:
            log.info("command.duplicate_dropped", command_id=ref)
            return None
        try:
            self._intake.put_nowait((message, delivered_at))
        except asyncio.QueueFull:
            log.warning("command.refused_busy", command_id=ref)
            return ErrorMessage(code="busy", message="too many queued commands", ref=ref)
        self._inbox.accept(message.command_id)
        self._idle.clear()
        return None

    # -- the owner of all command tasks -----------------------------------------------

    async def run(self) -> None:
        """Run until cancelled; cancelling it cancels (and so kills) every command."""
        async with asyncio.TaskGroup() as tg:
            while True:
                message, delivered_at = await self._intake.get()
                await self._report_delivered(message.command_id, delivered_at)
                tg.create_task(self._execute(message), name=f"command-{message.command_id}")

    def stop_accepting(self) -> None:
        """Refuse new commands from now on (graceful shutdown)."""
        self._accepting = False

    async def wait_idle(self) -> None:
        """Wait until no accepted command is queued or running."""
        await self._idle.wait()

    async def _execute(self, message: CommandRun) -> None:
        command_id = message.command_id
        with structlog.contextvars.bound_contextvars(
            command_id=str(command_id), user=message.username
        ):
            refused = self._refusal(message)
            if refused is not None:
                log.warning("command.denied", code=refused.code, reason=refused.detail)
                await self._outbox.put(lambda rid: _denied(rid, command_id, refused))
                # The inbox knows queued -> running -> finished; a refusal is the shortest run.
                self._inbox.advance(command_id, CommandState.RUNNING)
                self._done(command_id)
                return
            async with self._slots:
                self._inbox.advance(command_id, CommandState.RUNNING)
                outcome = await run_command(
                    message,
                    self._limits,
                    on_started=lambda at: self._report_acked(command_id, at),
                    on_output=lambda seq, data: self._report_output(command_id, seq, data),
                )
            await self._outbox.put(lambda rid: _finished(rid, command_id, outcome))
            self._done(command_id)

    def _refusal(self, message: CommandRun) -> GrantRefused | None:
        """Local enforcement: the grant is checked here, whatever the control plane did."""
        try:
            self._grants.check(
                message.grant, command_id=message.command_id, scope="command", now=time()
            )
        except GrantRefused as refused:
            return refused
        return None

    def _done(self, command_id: UUID) -> None:
        self._inbox.advance(command_id, CommandState.FINISHED)
        if not self._inbox.active():
            self._idle.set()

    async def _report_delivered(self, command_id: UUID, delivered_at: datetime) -> None:
        await self._outbox.put(
            lambda rid: CommandDelivered(rid=rid, command_id=command_id, delivered_at=delivered_at)
        )

    async def _report_acked(self, command_id: UUID, acked_at: datetime) -> None:
        await self._outbox.put(
            lambda rid: CommandAcked(rid=rid, command_id=command_id, acked_at=acked_at)
        )

    async def _report_output(self, command_id: UUID, seq: int, data: str) -> None:
        await self._outbox.put(
            lambda rid: CommandOutput(rid=rid, command_id=command_id, seq=seq, data=data)
        )


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
    )
