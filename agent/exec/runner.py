"""Run one command as its requested user and stream its output.

The command is ``/bin/sh -c line`` in a new session (so it leads its own process group),
with stdout and stderr merged into one pipe that the agent owns. Two activities run
side by side in a task group:

* the *pump* reads the pipe a block at a time, only when the previous block has been
  handed to ``on_output``: a slow consumer stops the reads, the pipe fills up and the
  command blocks in ``write``. Apart from the kernel's pipe buffer, at most one block,
  one partial chunk and the capped result are held in memory;
* the *supervisor* waits for the main process, enforces the timeout (SIGTERM to the
  group, grace, SIGKILL) and, once the process is gone, kills what is left of its
  process group so background jobs do not outlive the command.

After the exit the pump keeps reading: first everything that was already in the pipe
(the command's own last words, however slow the consumer), then until EOF but at most
:data:`DRAIN_TIMEOUT` seconds, since a grandchild that left the process group (setsid)
may hold the pipe open for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import termios
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import structlog

from agent.clock import monotonic, utcnow
from agent.config import LimitsConfig
from agent.errors import CommandError
from agent.exec.identity import Identity, build_environment, resolve_identity
from agent.exec.output import HeadTailCapture, OutputChunker
from agent.protocol.messages import CommandRun


__all__ = ["DRAIN_TIMEOUT", "SHELL", "CommandOutcome", "OnOutput", "OnStarted", "run_command"]

SHELL = "/bin/sh"
"""The interpreter of ``shell = "system"`` commands."""

READ_BLOCK = 64 * 1024
"""Bytes read from the pipe at a time."""

DRAIN_TIMEOUT = 2.0
"""Seconds to wait for EOF after the command exited and its pending output was read."""

OnStarted = Callable[[datetime], Awaitable[None]]
OnOutput = Callable[[int, str], Awaitable[None]]

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
        error_phase: ``None``, ``"start"`` (could not start) or ``"timeout"``.
        message: a human explanation for ``error_phase`` or for a death by signal.
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

    @property
    def success(self) -> bool:
        """The command exited with status 0 on its own."""
        return self.exit_code == 0 and self.error_phase is None


async def run_command(
    request: CommandRun,
    limits: LimitsConfig,
    *,
    on_started: OnStarted,
    on_output: OnOutput,
) -> CommandOutcome:
    """Run a command to completion.

    Args:
        request: the command.
        limits: timeout, kill grace, chunk size, flush interval and result cap.
        on_started: awaited once, before any output, with the start time; also for a
            command that cannot start.
        on_output: awaited with ``(seq, text)`` for each output chunk, ``seq`` from 0.

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
        identity, cwd = await asyncio.to_thread(_prepare, request)
        proc, read_fd = await _spawn(request, identity, cwd)
    except (CommandError, OSError, subprocess.SubprocessError) as exc:
        reason = _start_error(exc)
        log.warning("command.finished", error_phase="start", message=reason)
        await on_started(acked_at)
        return CommandOutcome(acked_at, utcnow(), 0.0, 1, "", False, 0, "start", reason)

    acked_at, started = utcnow(), monotonic()
    spawned = asyncio.get_running_loop().time()
    deadline = spawned + (request.timeout or limits.command_timeout)
    log.info("command.started", pid=proc.pid)
    pump = _Pump(read_fd, limits, on_output)
    try:
        await on_started(acked_at)
        async with asyncio.TaskGroup() as tg:
            supervisor = tg.create_task(
                _supervise(proc, spawned, deadline, limits.kill_grace, pump)
            )
            await pump.run()
        exit_ = supervisor.result()
    except BaseExceptionGroup as group:
        # In practice only on_output can fail in the group (the supervisor is then
        # cancelled); hand its exception to the caller unwrapped.
        raise group.exceptions[0] from None
    finally:
        pump.close()
        await _stop(proc, limits.kill_grace)

    elapsed = exit_.ended - started
    returncode = proc.returncode
    assert returncode is not None  # _supervise returns after the process was reaped
    error_phase: str | None = None
    message: str | None = None
    if exit_.timed_out:
        exit_code, error_phase = 124, "timeout"
        message = f"timed out after {exit_.timed_out_after:.1f} s"
    elif returncode < 0:
        exit_code = 128 - returncode
        message = f"killed by signal {_signal_name(-returncode)}"
    else:
        exit_code = returncode
    result, truncated = pump.capture.result()
    log.info(
        "command.finished",
        exit_code=exit_code,
        elapsed=round(elapsed, 3),
        bytes=pump.capture.total_bytes,
        error_phase=error_phase,
    )
    return CommandOutcome(
        acked_at=acked_at,
        handled_at=exit_.handled_at,
        elapsed_time=elapsed,
        exit_code=exit_code,
        result=result,
        truncated=truncated,
        output_bytes=pump.capture.total_bytes,
        error_phase=error_phase,
        message=message,
    )


def _prepare(request: CommandRun) -> tuple[Identity, str]:
    """Resolve the identity and working directory (blocking: NSS, NFS homes)."""
    identity = resolve_identity(request.username, request.groupname)
    return identity, identity.home if os.path.isdir(identity.home) else "/"


async def _spawn(
    request: CommandRun, identity: Identity, cwd: str
) -> tuple[asyncio.subprocess.Process, int]:
    """Start the process with a fresh pipe for its merged output; return it and the read end."""
    read_fd, write_fd = os.pipe()  # both close-on-exec; Popen dup2()s write_fd to 1 and 2
    try:
        switch = _needs_switch(identity)
        proc = await asyncio.create_subprocess_exec(
            SHELL,
            "-c",
            request.line,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            env=build_environment(identity, request.env),
            cwd=cwd,
            start_new_session=True,
            user=identity.uid if switch else None,
            group=identity.gid if switch else None,
            extra_groups=list(identity.groups) if switch else None,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        # Our copy of the write end must go, or the pipe would never report EOF.
        os.close(write_fd)
    os.set_blocking(read_fd, False)
    return proc, read_fd


def _needs_switch(identity: Identity) -> bool:
    """Whether the child must change uid, gid or groups to become ``identity``.

    Only root can switch; anyone else runs commands as themselves (resolve_identity refused
    any other identity). When the daemon already is exactly that identity, no switch is
    needed, which lets the standard library spawn with vfork (about 4x faster).
    """
    if os.geteuid() != 0:
        return False
    current = (os.geteuid(), os.getegid(), sorted(set(os.getgroups())))
    return current != (identity.uid, identity.gid, sorted(set(identity.groups)))


def _start_error(exc: BaseException) -> str:
    if isinstance(exc, CommandError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"cannot start the command: {exc.strerror}{where}"
    return f"cannot start the command: {exc}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


@dataclass(frozen=True, slots=True)
class _Exit:
    ended: float  # monotonic
    handled_at: datetime
    timed_out: bool
    timed_out_after: float


async def _supervise(
    proc: asyncio.subprocess.Process,
    spawned: float,
    deadline: float,
    grace: float,
    pump: _Pump,
) -> _Exit:
    """Wait for the main process (stopping it at ``deadline``), then kill its group.

    ``spawned`` and ``deadline`` are event-loop times.
    """
    timed_out, timed_out_after = False, 0.0
    try:
        async with asyncio.timeout_at(deadline):
            await proc.wait()
    except TimeoutError:
        timed_out, timed_out_after = True, asyncio.get_running_loop().time() - spawned
        await _stop(proc, grace)
    ended, handled_at = monotonic(), utcnow()
    # Background jobs of the command share its process group; they must not outlive it.
    _signal_group(proc.pid, signal.SIGKILL)
    pump.process_exited()
    return _Exit(ended, handled_at, timed_out, timed_out_after)


async def _stop(proc: asyncio.subprocess.Process, grace: float) -> None:
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


class _Pump:
    """Reads the command's output pipe and hands it on in chunks (see the module doc)."""

    def __init__(self, fd: int, limits: LimitsConfig, on_output: OnOutput) -> None:
        self.capture = HeadTailCapture(limits.result_cap_bytes)
        self._fd: int | None = fd
        self._on_output = on_output
        self._chunker = OutputChunker(limits.output_chunk_bytes)
        self._flush_interval = limits.output_flush_interval
        self._seq = 0
        self._waiter: asyncio.Future[None] | None = None
        # Set when the main process is gone: the pipe's backlog at that moment and the
        # time after which we stop waiting for EOF.
        self._backlog_until: int | None = None
        self._drain_deadline = 0.0

    def process_exited(self) -> None:
        """Note that the main process is gone and start the drain clock."""
        assert self._fd is not None
        backlog = struct.unpack("i", fcntl.ioctl(self._fd, termios.FIONREAD, b"\0" * 4))[0]
        self._backlog_until = self.capture.total_bytes + backlog
        self._drain_deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT
        self._wake()

    async def run(self) -> None:
        """Read until EOF or the end of the drain period; emit the last partial chunk."""
        loop = asyncio.get_running_loop()
        flush_at: float | None = None
        while True:
            data = self._read()
            if data == b"":
                break
            if data:
                self.capture.feed(data)
                for text in self._chunker.feed(data):
                    await self._emit(text)
            now = loop.time()
            if not self._chunker.pending:
                flush_at = None
            elif flush_at is None:
                flush_at = now + self._flush_interval
            elif now >= flush_at:
                await self._emit(self._chunker.flush())
                # An incomplete UTF-8 sequence may stay behind: try again next interval.
                flush_at = now + self._flush_interval if self._chunker.pending else None
            if self._draining_done(now):
                break
            if data is None:
                await self._wait_readable(self._next_deadline(flush_at))
            else:
                # A chatty command and an on_output that never suspends must not
                # starve the supervisor (timeouts) or the rest of the agent.
                await asyncio.sleep(0)
        await self._emit(self._chunker.flush(final=True))

    def close(self) -> None:
        """Close the read end; a writer still holding the pipe gets SIGPIPE/EPIPE."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _read(self) -> bytes | None:
        """One non-blocking read: data, ``b""`` at EOF, ``None`` if nothing is there yet."""
        assert self._fd is not None
        try:
            return os.read(self._fd, READ_BLOCK)
        except BlockingIOError:
            return None

    def _draining_done(self, now: float) -> bool:
        return (
            self._backlog_until is not None
            and self.capture.total_bytes >= self._backlog_until
            and now >= self._drain_deadline
        )

    def _next_deadline(self, flush_at: float | None) -> float | None:
        deadlines = [flush_at] if flush_at is not None else []
        if self._backlog_until is not None:
            deadlines.append(self._drain_deadline)
        return min(deadlines, default=None)

    async def _wait_readable(self, deadline: float | None) -> None:
        """Wait until the pipe is readable, ``deadline`` (loop time) passes or we are woken."""
        assert self._fd is not None
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        loop.add_reader(self._fd, _resolve, waiter)
        timer = loop.call_at(deadline, _resolve, waiter) if deadline is not None else None
        try:
            await waiter
        finally:
            loop.remove_reader(self._fd)
            if timer is not None:
                timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)

    async def _emit(self, text: str) -> None:
        if text:
            seq, self._seq = self._seq, self._seq + 1
            await self._on_output(seq, text)


def _resolve(waiter: asyncio.Future[None]) -> None:
    # Readiness callbacks can fire again before the waiting coroutine runs.
    if not waiter.done():
        waiter.set_result(None)
