"""Run one command as its requested user and stream its output.

The command is ``/bin/sh -c line`` in a new session (so it leads its own process group),
with stdout and stderr merged into one pipe that the agent owns. Two activities run
side by side in a task group:

* the *pump* reads the pipe a block at a time, only when the previous block has been
  handed to ``on_output``: a slow consumer stops the reads, the pipe fills up and the
  command blocks in ``write``. Apart from the kernel's pipe buffer, at most one block,
  one partial chunk and the capped result are held in memory;
* the *supervisor* waits for the main process, enforces the timeout (SIGTERM to the
  group, grace, SIGKILL), stops it the same way when its work session ends
  (:mod:`fleetgate.agent.exec.stopping`) and, once the process is gone, kills what is left of its
  process group so background jobs do not outlive the command.

After the exit the pump keeps reading: first everything that was already in the pipe
(the command's own last words, however slow the consumer), then until EOF but at most
:data:`fleetgate.agent.exec.pump.DRAIN_TIMEOUT` seconds, since a grandchild that left the process group (setsid)
may hold the pipe open for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from uuid import UUID

import structlog

from fleetgate.agent.clock import monotonic, utcnow
from fleetgate.agent.config.resources import LimitsConfig
from fleetgate.agent.errors import CommandError
from fleetgate.agent.exec.child import Process
from fleetgate.agent.exec.exitstatus import exit_status
from fleetgate.agent.exec.idcache import IdentityCache, files_signature
from fleetgate.agent.exec.identity import Identity
from fleetgate.agent.exec.pump import OnOutput, OutputPump
from fleetgate.agent.exec.spawn import find_setpriv, needs_switch, prepare, spawn, spawn_through
from fleetgate.agent.exec.spawner import SpawnerUnavailable
from fleetgate.agent.exec.spawner_pool import SpawnerPool
from fleetgate.agent.exec.stopping import STOPPED_CODE, StopRequest, exited_or_stopped
from fleetgate.shared.protocol.messages import CommandFinished, CommandRun


__all__ = ["CommandOutcome", "OnStarted", "close_spawner", "run_command"]

OnStarted = Callable[[datetime], Awaitable[None]]

_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """How a command ended.

    Attributes:
        acked_at: when the process started (or when the start was attempted).
        handled_at: when it ended.
        elapsed_time: monotonic seconds from start to exit (0.0 if it never started).
        exit_code: the exit status; 128+N if killed by signal N, 124 on timeout,
            1 if it could not start.
        result: the output, capped to head and tail.
        truncated: bytes were left out of ``result``.
        output_bytes: total bytes the command wrote.
        error_phase: ``None``, ``"start"`` (could not start), ``"timeout"`` or
            ``"stopped"`` (its work session ended).
        message: a human explanation for ``error_phase`` or for a death by signal.
        code: the stable code of a stop (:data:`~fleetgate.agent.exec.stopping.STOPPED_CODE`).
    """

    acked_at: datetime
    handled_at: datetime
    elapsed_time: float
    exit_code: int
    result: str
    truncated: bool
    output_bytes: int
    error_phase: str | None
    message: str | None
    code: str | None = None

    @property
    def success(self) -> bool:
        """The command exited with status 0 on its own."""
        return self.exit_code == 0 and self.error_phase is None

    def final_report(self, rid: int, command_id: UUID) -> CommandFinished:
        """The command's final report, numbered ``rid``."""
        return CommandFinished(
            rid=rid,
            command_id=command_id,
            handled_at=self.handled_at,
            elapsed_time=self.elapsed_time,
            exit_code=self.exit_code,
            success=self.success,
            result=self.result,
            truncated=self.truncated,
            output_bytes=self.output_bytes,
            error_phase=self.error_phase,
            message=self.message,
            code=self.code,
        )


async def run_command(
    request: CommandRun,
    limits: LimitsConfig,
    *,
    on_started: OnStarted,
    on_output: OnOutput,
    use_setpriv: bool = True,
    use_spawner: bool = True,
    track: Callable[[int], Callable[[], None]] | None = None,
    stop: StopRequest | None = None,
) -> CommandOutcome:
    """Run a command to completion.

    Args:
        request: the command.
        limits: timeout, kill grace, chunk size, flush interval and result cap.
        on_started: awaited once, before any output, with the start time; also for a
            command that cannot start.
        on_output: awaited with ``(seq, text)`` for each output chunk, ``seq`` from 0.
        use_setpriv: without the spawner, drop privileges through util-linux setpriv
            when it is installed (see :mod:`fleetgate.agent.exec.spawn`); False forces the
            standard library's switch.
        use_spawner: start a command that changes identity through the spawner helper
            (:mod:`fleetgate.agent.exec.spawner`); if it cannot be started, the setpriv
            or standard library path is used (``exec.spawner_unavailable`` in the log).
        track: called with the pid (= the process session id) as soon as the process
            exists; the callable it returns is called once the process group is gone
            (sudo mediation registers the session this way).
        stop: once asked, the process group is stopped as at a timeout and the outcome's
            ``error_phase`` is ``"stopped"`` (its work session ended).

    Returns:
        The outcome. A command that cannot start is an outcome too (``error_phase``
        ``"start"``), never an exception.

    Raises:
        asyncio.CancelledError: after the process group was stopped and reaped.
        Exception: whatever ``on_started`` or ``on_output`` raised, likewise after
            stopping the command.
    """
    log = _log.bind(command_id=str(request.command_id), user=request.username)
    acked_at = utcnow()
    try:
        identity, cwd = await _prepare(request)
        proc, read_fd = await _spawn(request, identity, cwd, use_spawner, use_setpriv)
    except (CommandError, OSError, subprocess.SubprocessError) as exc:
        reason = _start_error(exc)
        log.warning("command.finished", error_phase="start", message=reason)
        await on_started(acked_at)
        return CommandOutcome(acked_at, utcnow(), 0.0, 1, "", False, 0, "start", reason)

    acked_at, started = utcnow(), monotonic()
    spawned = asyncio.get_running_loop().time()
    deadline = spawned + (request.timeout or limits.command_timeout)
    log.info("command.started", pid=proc.pid)
    untrack = track(proc.pid) if track is not None else None
    pump = OutputPump(read_fd, limits, on_output)
    try:
        await on_started(acked_at)
        async with asyncio.TaskGroup() as tg:
            supervisor = tg.create_task(
                _supervise(proc, spawned, deadline, limits.kill_grace, pump, stop)
            )
            await pump.run()
        exit_ = supervisor.result()
    except BaseExceptionGroup as group:
        # In practice only on_output can fail in the group (the supervisor is then
        # cancelled); hand its exception to the caller unwrapped.
        raise group.exceptions[0] from None
    finally:
        pump.close()
        try:
            await _stop(proc, limits.kill_grace)
        finally:
            if untrack is not None:
                untrack()

    elapsed = exit_.ended - started
    returncode = proc.returncode
    assert returncode is not None  # _supervise returns after the process was reaped
    status = exit_status(returncode, exit_.timed_out_after if exit_.timed_out else None)
    code = None
    if exit_.stopped and stop is not None:
        status = replace(status, error_phase="stopped", message=stop.reason)
        code = STOPPED_CODE
    result, truncated = pump.capture.result()
    log.info(
        "command.finished",
        exit_code=status.exit_code,
        elapsed=round(elapsed, 3),
        bytes=pump.capture.total_bytes,
        error_phase=status.error_phase,
    )
    return CommandOutcome(
        acked_at=acked_at,
        handled_at=exit_.handled_at,
        elapsed_time=elapsed,
        exit_code=status.exit_code,
        result=result,
        truncated=truncated,
        output_bytes=pump.capture.total_bytes,
        error_phase=status.error_phase,
        message=status.message,
        code=code,
    )


_IDENTITIES = IdentityCache()
"""Identities resolved lately (see :mod:`fleetgate.agent.exec.idcache`)."""

SPAWNERS = 2
"""Spawner helpers at most: each starts one command at a time; with two, 8 concurrent
``true`` as another user took 1.0-1.4 ms each against 1.5-2.3 ms through setpriv (one
helper: 3.3-3.9 ms)."""

_SPAWNER = SpawnerPool(SPAWNERS)
"""The spawner helpers; the first starts with the first command that changes identity."""


async def _spawn(
    request: CommandRun, identity: Identity, cwd: str, use_spawner: bool, use_setpriv: bool
) -> tuple[Process, int]:
    """Start the process the cheapest way that keeps every property of the switch."""
    if use_spawner and needs_switch(identity):
        try:
            return await spawn_through(_SPAWNER, request, identity, cwd)
        except SpawnerUnavailable:
            pass  # logged by the spawner; the in-process paths below still work
    return spawn(request, identity, cwd, setpriv=find_setpriv() if use_setpriv else None)


def close_spawner() -> None:
    """End the spawner helper, if it runs (agent shutdown, once no command runs)."""
    _SPAWNER.close()


async def _prepare(request: CommandRun) -> tuple[Identity, str]:
    """The identity and working directory: from the cache, else looked up in a thread."""
    now, signature = monotonic(), files_signature()
    hit = _IDENTITIES.get(request.username, request.groupname, now=now, signature=signature)
    if hit is not None:
        return hit
    identity, cwd = await asyncio.to_thread(prepare, request)
    _IDENTITIES.put(
        request.username, request.groupname, identity, cwd, now=now, signature=signature
    )
    return identity, cwd


def _start_error(exc: BaseException) -> str:
    if isinstance(exc, CommandError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"cannot start the command: {exc.strerror}{where}"
    return f"cannot start the command: {exc}"


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


@dataclass(frozen=True, slots=True)
class _Exit:
    ended: float  # monotonic
    handled_at: datetime
    timed_out: bool
    timed_out_after: float
    stopped: bool


async def _supervise(
    proc: Process,
    spawned: float,
    deadline: float,
    grace: float,
    pump: OutputPump,
    stop: StopRequest | None,
) -> _Exit:
    """Wait for the main process (stopping it at ``deadline`` or when ``stop`` is
    asked), then kill its group.

    ``spawned`` and ``deadline`` are event-loop times.
    """
    timed_out, timed_out_after, stopped = False, 0.0, False
    try:
        async with asyncio.timeout_at(deadline):
            stopped = await exited_or_stopped(proc, stop)
    except TimeoutError:
        timed_out, timed_out_after = True, asyncio.get_running_loop().time() - spawned
    if timed_out or stopped:
        await _stop(proc, grace)
    ended, handled_at = monotonic(), utcnow()
    # Background jobs of the command share its process group; they must not outlive it.
    _signal_group(proc.pid, signal.SIGKILL)
    pump.process_exited()
    return _Exit(ended, handled_at, timed_out, timed_out_after, stopped)


async def _stop(proc: Process, grace: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds, reap the process.

    Runs in ``finally`` blocks, so it finishes even if cancelled again meanwhile: a
    second cancellation only skips the rest of the grace period, then is re-raised.
    """
    cancelled = False
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            cancelled = True
    _signal_group(proc.pid, signal.SIGKILL)
    while proc.returncode is None:
        try:
            await proc.wait()
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
