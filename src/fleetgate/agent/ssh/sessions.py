"""The sessions of one SSH connection: a shell (a websh terminal), a command, or sftp.

Each request is gated by its scope against the connection's grant, runs as the user in a
task of the connection's group (at most :data:`MAX_SESSIONS` at once), and goes on the
work session's timeline; a refusal is told to the client on the session's stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import asyncssh
import structlog

from fleetgate.agent.errors import ChannelClosed, ChannelRefused, CommandError
from fleetgate.agent.exec.identity import Identity, resolve_identity
from fleetgate.agent.ssh.context import SshRefusal, scope_refusal
from fleetgate.agent.ssh.processes import (
    PidHook,
    TerminalBridge,
    login_shell,
    parse_sftp_log,
    run_process,
)
from fleetgate.agent.websh.manager import TerminalRequest


if TYPE_CHECKING:
    from fleetgate.agent.ssh.server import SshConnection


__all__ = ["EXIT_REFUSED", "MAX_SESSIONS", "Sessions", "SshDenied", "resolve_user"]

log = structlog.get_logger(__name__)

EXIT_REFUSED = 126
MAX_SESSIONS = 64
"""Sessions (shells, commands, sftp) open at once on one connection (OpenSSH: 10 by
default, ``MaxSessions``); more are refused."""
_TERM_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")


class Sessions:
    """The sessions of one connection, from the request to the exit status."""

    def __init__(self, conn: SshConnection) -> None:
        self.conn = conn
        self._count = 0
        self._handlers: set[asyncio.Task[None]] = set()

    def start(
        self, process: asyncssh.SSHServerProcess[bytes], tg: asyncio.TaskGroup | None
    ) -> None:
        """A session's request arrived (shell, exec, subsystem): handle it in a task of
        ``tg``, the connection's group (``None`` once it has ended: refused)."""
        if tg is None or self._count >= MAX_SESSIONS:
            with contextlib.suppress(OSError, asyncssh.Error):
                process.stderr.write(
                    f"fleetgate: refused: {MAX_SESSIONS} sessions are open on this "
                    "connection (too_many_sessions)\r\n".encode()
                )
                process.exit(EXIT_REFUSED)
            return
        self._count += 1
        handler = tg.create_task(self._handle(process))
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)

    def cancel_all(self) -> None:
        """The client went away: what it started goes too (process groups killed by
        run_process), instead of running on unseen."""
        for handler in list(self._handlers):
            handler.cancel()

    async def _handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        code = EXIT_REFUSED
        try:
            code = await self._dispatch(process)
        except SshDenied as denied:
            await self._refuse(process, denied.refusal)
        except (asyncssh.Error, OSError, ChannelClosed) as exc:
            log.info("ssh.session_lost", reason=str(exc) or type(exc).__name__)
        except Exception:
            log.exception("ssh.session_failed")
        finally:
            self._count -= 1
            with contextlib.suppress(OSError, asyncssh.Error):
                process.exit(code)

    async def _dispatch(self, process: asyncssh.SSHServerProcess[bytes]) -> int:
        await asyncio.sleep(0)  # let a forwarding request of this session be decided first
        self._flush_notices(process)
        if process.subsystem is not None:
            if process.subsystem != "sftp":
                raise SshDenied("unsupported", f"subsystem {process.subsystem!r} is not offered")
            return await self._sftp(process)
        if process.command is not None:
            return await self._exec(process, process.command)
        if process.get_terminal_type() is None:
            self._check("shell")
            raise SshDenied(
                "pty_required", "an interactive shell needs a terminal (ssh -t), and is recorded"
            )
        return await self._shell(process)

    def _check(self, op: str) -> None:
        denied = scope_refusal(op, self.conn.claims)
        if denied is not None:
            raise SshDenied(denied.code, denied.detail)

    def _flush_notices(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        for notice in self.conn.notices:
            process.stderr.write(f"fleetgate: {notice}\r\n".encode())
        self.conn.notices.clear()

    async def _refuse(self, process: asyncssh.SSHServerProcess[bytes], why: SshRefusal) -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            process.stderr.write(f"fleetgate: refused: {why.detail} ({why.code})\r\n".encode())
        await self.conn.report("refused", code=why.code, detail=why.detail[:4096])

    async def _identity(self) -> tuple[Identity, str]:
        """The user and the working directory (home, or ``/``): blocking lookups, in a thread."""
        try:
            return await asyncio.to_thread(resolve_user, self.conn.username)
        except CommandError as exc:
            raise SshDenied("unknown_user", str(exc)) from None

    async def _shell(self, process: asyncssh.SSHServerProcess[bytes]) -> int:
        self._check("shell")
        width, height, _, _ = process.get_terminal_size()
        term = process.get_terminal_type() or ""
        request = TerminalRequest(
            terminal_id=uuid.uuid4(),
            username=self.conn.username,
            rows=max(1, min(1000, height or 24)),
            cols=max(1, min(1000, width or 80)),
            term=term if term and len(term) <= 64 and set(term) <= _TERM_OK else None,
        )
        terminals = self.conn.ctx.terminals
        try:
            terminals.check(request)
        except ChannelRefused as exc:
            raise SshDenied(exc.code, exc.message) from None
        await self.conn.report("shell", terminal_id=request.terminal_id, detail="interactive shell")
        bridge = TerminalBridge(process)
        try:
            await terminals.serve(request, bridge, self.conn.claims)
        except ChannelRefused as exc:
            raise SshDenied(exc.code, exc.message) from None
        except asyncio.CancelledError:
            # An SSH shell is never left detached: there is no reattaching to it.
            terminals.close(request.terminal_id, "closed")
            raise
        return bridge.exit_code or 0

    async def _exec(self, process: asyncssh.SSHServerProcess[bytes], command: str) -> int:
        self._check("exec")
        identity, cwd = await self._identity()
        started = time.monotonic()
        started_hook, ended_hook = self._sudo_hooks()
        code = await run_process(
            process,
            identity,
            [login_shell(identity), "-c", command],
            cwd=cwd,
            setpriv=self.conn.ctx.setpriv,
            on_started=started_hook,
            on_ended=ended_hook,
        )
        await self.conn.report(
            "exec",
            detail=command[:4096],
            exit_code=code,
            elapsed=round(time.monotonic() - started, 3),
        )
        return code

    async def _sftp(self, process: asyncssh.SSHServerProcess[bytes]) -> int:
        self._check("sftp")
        identity, cwd = await self._identity()

        async def on_log(line: str) -> None:
            moved = parse_sftp_log(line)
            if moved is None:
                return
            path, read, written = moved
            if read or written:
                what = "download" if read and not written else "upload"
                await self.conn.report(
                    "sftp",
                    detail=f"{what} {path}"[:4096],
                    path=path[:4096],
                    bytes_read=read,
                    bytes_written=written,
                )

        argv = [str(self.conn.ctx.config.ssh.sftp_server), "-e", "-l", "INFO"]
        started_hook, ended_hook = self._sudo_hooks()
        return await run_process(
            process,
            identity,
            argv,
            cwd=cwd,
            setpriv=self.conn.ctx.setpriv,
            stderr_lines=on_log,
            on_started=started_hook,
            on_ended=ended_hook,
        )

    def _sudo_hooks(self) -> tuple[PidHook | None, PidHook | None]:
        """The sudo mediation's hooks (the ones websh shells use) for one process session:
        a ``sudo`` inside it follows the work session's patterns."""
        terminals = self.conn.ctx.terminals
        started, ended = terminals.on_shell_started, terminals.on_shell_ended
        label = uuid.uuid4()
        claims = self.conn.claims

        def on_started(pid: int) -> Awaitable[None] | None:
            return None if started is None else started(pid, claims, label)

        return on_started, ended


def resolve_user(username: str) -> tuple[Identity, str]:
    """The user and the working directory (home, or ``/``); blocking lookups."""
    identity = resolve_identity(username, None)
    return identity, identity.home if os.path.isdir(identity.home) else "/"


class SshDenied(ChannelRefused):
    """One SSH request refused (the connection goes on); the client sees the detail."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail)
        self.refusal = SshRefusal(code, detail)
