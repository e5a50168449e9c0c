"""The agent's terminals: opening, reattaching, limits, the recording spool, hooks.

:class:`TerminalManager` owns every running terminal in its own TaskGroup (:meth:`run`),
because a shell outlives the channel that opened it. A channel only attaches to it
(:meth:`serve`). The sudo mediation connects to ``on_shell_started``/``on_shell_ended``:
the pid they receive is the shell's, which is also the session id of every process the
terminal runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import structlog

from fleetgate.agent.config import AgentConfig
from fleetgate.agent.errors import ChannelRefused, CommandError
from fleetgate.agent.exec.identity import resolve_identity
from fleetgate.agent.websh.attachment import Link
from fleetgate.agent.websh.quota import SpoolQuota
from fleetgate.agent.websh.recording import Recorder
from fleetgate.agent.websh.shell import (
    ShellProcess,
    choose_shell,
    login_environment,
    spawn_shell,
)
from fleetgate.agent.websh.state import Owner
from fleetgate.agent.websh.terminal import Terminal
from fleetgate.shared.protocol.grants import GrantClaims


__all__ = ["ShellEnded", "ShellStarted", "TerminalManager", "TerminalRequest", "owner_of"]

log = structlog.get_logger(__name__)

START_WAIT = 5.0
"""Seconds a terminal asked for as the service is built waits for its owner to run."""

ShellStarted = Callable[[int, GrantClaims | None, UUID], Awaitable[None] | None]
ShellEnded = Callable[[int], Awaitable[None] | None]
RecordingDone = Callable[[UUID, Path], None]


@dataclass(frozen=True, slots=True)
class TerminalRequest:
    """What a channel asks for (the fields of ``WebshSpec``)."""

    terminal_id: UUID
    username: str = "root"
    groupname: str | None = None
    rows: int = 24
    cols: int = 80
    shell: str | None = None
    term: str | None = None
    attach: bool = False


def owner_of(request: TerminalRequest, claims: GrantClaims | None) -> Owner:
    """Who a terminal belongs to: the account plus the grant's work session and assignee."""
    if claims is None:
        return Owner(request.username, None, None)
    return Owner(request.username, claims.work_session, claims.assignee)


class TerminalManager:
    """Every terminal of this agent, keyed by terminal id."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        on_shell_started: ShellStarted | None = None,
        on_shell_ended: ShellEnded | None = None,
        on_recording_done: RecordingDone | None = None,
    ) -> None:
        self.config = config
        self.websh = config.websh
        self.terminals: dict[UUID, Terminal] = {}
        self.quota = SpoolQuota(self.websh.recording_max_bytes, _spool_usage(config.recordings_dir))
        self.on_shell_started = on_shell_started
        self.on_shell_ended = on_shell_ended
        self.on_recording_done = on_recording_done
        self._tg: asyncio.TaskGroup | None = None
        self._entered = asyncio.Event()  # run() owns its task group (set once)
        self._starting = 0

    async def run(self) -> None:
        """Own the terminals until cancelled; cancelling ends every shell (SIGHUP, SIGKILL)."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            self._entered.set()
            try:
                await asyncio.Event().wait()
            finally:
                self._tg = None

    async def _owner(self) -> asyncio.TaskGroup:
        """The task group that will own a new terminal.

        A service built for its first terminal starts :meth:`run` in the same step, but a
        pre-dialled channel can ask for the terminal before that task first runs: it waits
        for it (briefly). Once :meth:`run` has ended, the agent is shutting down.

        Raises:
            ChannelRefused: ``shutting_down``.
        """
        if self._tg is None and not self._entered.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(START_WAIT):
                    await self._entered.wait()
        if self._tg is None:
            raise ChannelRefused("shutting_down", "the agent is not serving terminals")
        return self._tg

    def check(self, request: TerminalRequest) -> None:
        """Fast refusals before a channel is dialled.

        Raises:
            ChannelRefused: ``websh_disabled``, ``too_many_sessions``, ``unknown_terminal``,
                ``recording_unavailable``.
        """
        if not self.websh.enabled:
            raise ChannelRefused("websh_disabled", "websh is disabled on this server")
        if request.attach:
            if request.terminal_id not in self.terminals:
                raise ChannelRefused("unknown_terminal", "no such terminal on this server")
            return
        if request.terminal_id in self.terminals:
            raise ChannelRefused("invalid", "the terminal id is already in use")
        if len(self.terminals) + self._starting >= self.websh.max_sessions:
            raise ChannelRefused(
                "too_many_sessions", f"{self.websh.max_sessions} terminals are already open"
            )
        if self.websh.recording_full == "refuse" and self.quota.full:
            raise ChannelRefused(
                "recording_unavailable", "the recording spool is full; terminals are refused"
            )

    async def serve(self, request: TerminalRequest, link: Link, claims: GrantClaims | None) -> None:
        """Open (or reattach to) the terminal and serve ``link`` until it detaches or ends.

        Raises:
            ChannelRefused: see :meth:`check`; also ``unknown_user``, ``invalid_shell``,
                ``spawn_failed``, ``forbidden`` (reattach by someone else), ``terminal_closed``.
        """
        self.check(request)
        owner = owner_of(request, claims)
        expires_at = None if claims is None else claims.expires_at
        if request.attach:
            terminal = self.terminals[request.terminal_id]
            terminal.state.check_attach(owner)
            terminal.expire_at(expires_at)
            await terminal.attach(link, owner)
            return
        terminal = await self._start(request, owner, claims)
        terminal.expire_at(expires_at)
        await terminal.attach(link, owner, first=True)

    def close(self, terminal_id: UUID, reason: str = "closed") -> bool:
        """End a terminal (SIGHUP, then SIGKILL); False if there is no such terminal."""
        terminal = self.terminals.get(terminal_id)
        if terminal is None:
            return False
        terminal.close(reason)
        return True

    async def _start(
        self, request: TerminalRequest, owner: Owner, claims: GrantClaims | None
    ) -> Terminal:
        await self._owner()
        self._starting += 1
        try:
            try:
                identity = await asyncio.to_thread(
                    resolve_identity, request.username, request.groupname
                )
            except CommandError as exc:
                raise ChannelRefused("unknown_user", str(exc)) from exc
            shell = choose_shell(identity, request.shell)
            env = login_environment(identity, shell, request.term or self.websh.default_term)
            recorder = self._recorder(request, env)
            spawn = asyncio.ensure_future(
                asyncio.to_thread(spawn_shell, identity, shell, env, request.rows, request.cols)
            )
            try:
                process = await asyncio.shield(spawn)
            except BaseException:
                if recorder is not None:
                    recorder.close()
                # The fork runs in a thread that cannot be interrupted: whenever it
                # returns (it may have already), the shell it started is nobody's and is
                # killed and reaped, instead of running on with nobody to reap it.
                spawn.add_done_callback(_kill_unowned)
                raise
        finally:
            self._starting -= 1
        terminal = Terminal(
            request.terminal_id,
            process,
            owner,
            self.websh,
            rows=request.rows,
            cols=request.cols,
            recorder=recorder,
            refuse_unrecorded=self.websh.recording_full == "refuse",
        )
        self.terminals[request.terminal_id] = terminal
        log.info(
            "websh.started",
            terminal_id=str(request.terminal_id),
            user=identity.name,
            shell=shell,
            pid=process.pid,
            work_session=owner.work_session,
        )
        if self.on_shell_started is not None:
            result = self.on_shell_started(process.pid, claims, request.terminal_id)
            if result is not None:
                await result
        if self._tg is None:
            terminal.close("shutdown")
        else:
            self._tg.create_task(self._run(terminal))
        return terminal

    def _recorder(self, request: TerminalRequest, env: dict[str, str]) -> Recorder | None:
        try:
            return Recorder.create(
                self.config.recordings_dir,
                request.terminal_id,
                self.quota,
                width=request.cols,
                height=request.rows,
                env={"SHELL": env["SHELL"], "TERM": env["TERM"]},
                title=f"{request.username}@{os.uname().nodename}",
            )
        except OSError as exc:
            if self.websh.recording_full == "refuse":
                raise ChannelRefused("recording_unavailable", f"cannot record: {exc}") from exc
            log.error(
                "websh.recording_failed", terminal_id=str(request.terminal_id), error=str(exc)
            )
            return None

    async def _run(self, terminal: Terminal) -> None:
        bound = log.bind(terminal_id=str(terminal.terminal_id), pid=terminal.pid)
        try:
            code = await terminal.run()
            bound.info("websh.ended", exit_code=code, reason=terminal.state.close_reason)
        except Exception:  # noqa: BLE001 - one broken terminal must not end the others
            bound.exception("websh.failed")
        finally:
            self.terminals.pop(terminal.terminal_id, None)
            if self.on_shell_ended is not None:
                result = self.on_shell_ended(terminal.pid)
                if result is not None:
                    await result
            recorder = terminal.recorder
            if recorder is not None and self.on_recording_done is not None:
                self.on_recording_done(terminal.terminal_id, recorder.path)


def _spool_usage(directory: Path) -> int:
    """Bytes of the recordings already spooled (left over from a previous run)."""
    try:
        return sum(p.stat().st_size for p in directory.glob("*.cast"))
    except OSError:
        return 0


def _kill_unowned(spawn: asyncio.Future[ShellProcess]) -> None:
    """SIGKILL the process group of a shell whose opener went away, and reap it.

    Nobody ever attached to it: the login shell has only just started and owns nothing
    that needs a SIGHUP. After SIGKILL its exit is immediate, so ``wait`` returns at once.
    """
    if spawn.cancelled() or spawn.exception() is not None:
        return
    shell = spawn.result()
    os.close(shell.master_fd)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(shell.pid, signal.SIGKILL)
    shell.process.wait()
    log.info("websh.unowned_shell_killed", pid=shell.pid)
