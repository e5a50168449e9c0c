"""`websh SERVER [-u USER]`: an interactive terminal; `websh SERVER "CMD"`: one command.

Interactive: the local terminal goes to raw mode (restored on every way out), keystrokes
go to the remote shell as binary frames, its output comes back the same way, window size
changes are sent as resize frames, and agentctl exits with the shell's exit code. When the
connection drops, agentctl reattaches to the same shell a few times before giving up.
With a command, it goes through the command path (`exec`, which needs the `command` scope).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from fleetgate.agentctl.channel import connect_channel
from fleetgate.agentctl.commands import exec_cmd, exec_history
from fleetgate.agentctl.context import Context
from fleetgate.agentctl.errors import (
    EXIT_GATE_DENIED,
    SESSION_ENDED_CODES,
    AgentctlError,
    CliError,
    ControlPlaneError,
    UsageError,
)
from fleetgate.shared.backoff import backoff_delays
from fleetgate.shared.errors import ProtocolViolation
from fleetgate.shared.jsontext import loads as json_loads
from fleetgate.shared.protocol.channels import CLOSE_REFUSED
from fleetgate.shared.protocol.websh import Exit, WebshError, decode_agent_frame


if TYPE_CHECKING:
    from fleetgate.agentctl.commands import SubParsers

TERMINALS = "/api/websh/terminals/"
SESSIONS = "/api/work-sessions/sessions/"
REATTACH_ATTEMPTS = 5
"""Reattaches after an unexpected drop before agentctl gives up."""
_LOST = {1006, 1011, 1012, 1013, 1014}
"""Close codes of a lost connection (worth a reattach), not of an ended terminal."""


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    """Add `websh`."""
    parser = subparsers.add_parser(
        "websh",
        parents=[common],
        help="open a terminal on a server (or run one command)",
        usage="agentctl websh [options] SERVER [[--] CMD...]",
        description="Open an interactive login shell on SERVER as USER (default root), in a "
        "recorded session; needs the work session's `websh` scope. With CMD, run that command "
        "through the command path instead (the `command` scope), like `agentctl exec`.",
    )
    parser.add_argument("server", metavar="SERVER", help="server name or id")
    parser.add_argument(
        "-u",
        "--user",
        help="log in as this user (default: root, or your server account if you are gated)",
    )
    parser.add_argument("-g", "--group", help="with this primary group (default: the user's)")
    parser.add_argument("--shell", help="a shell listed in the server's /etc/shells")
    parser.add_argument(
        "--work-session",
        metavar="ID",
        help="work session to attach to (default: $AGENTCTL_WORK_SESSION, then `work-session use`)",
    )
    # CMD arrives as the stray words after SERVER (or after `--`), as for `exec`.
    parser.set_defaults(handler=run_websh, takes_remote=True)


def run_websh(ctx: Context, args: argparse.Namespace) -> int:
    """Run a command, or open the interactive terminal."""
    words = exec_cmd.command_words(args)
    if words:
        return exec_cmd.run_exec(ctx, _exec_args(args, words))
    ctx.operation, ctx.server = "websh", args.server
    ctx.work_session = ctx.selected_work_session(args.work_session)
    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    if not os.isatty(stdin_fd):
        raise UsageError("websh needs a terminal on stdin; pass CMD to run a command instead")
    rows, cols = _window_size(stdout_fd)
    body: dict[str, Any] = {"server": args.server, "rows": rows, "cols": cols}
    if args.user:
        body["username"] = args.user
    if args.group:
        body["groupname"] = args.group
    if args.shell:
        body["shell"] = args.shell
    if ctx.work_session:
        body["work_session"] = ctx.work_session
    client = ctx.client()
    try:
        terminal = client.post(TERMINALS, body)
    except ControlPlaneError as exc:
        if exc.is_gate_denial:
            exec_history.explain_denial(ctx, client)
        raise
    session = Terminal(ctx, str(terminal["id"]), stdin_fd, stdout_fd)
    with raw_mode(stdin_fd):
        return asyncio.run(session.run())


def _exec_args(args: argparse.Namespace, words: list[str]) -> argparse.Namespace:
    """The arguments `exec SERVER CMD` would have (every exec flag at its default)."""
    parser = argparse.ArgumentParser(add_help=False)
    exec_cmd.register(parser.add_subparsers(), argparse.ArgumentParser(add_help=False))
    argv = ["exec", "run", args.server]
    if args.user:
        argv += ["-u", args.user]
    if args.group:
        argv += ["-g", args.group]
    if args.work_session:
        argv += ["--work-session", args.work_session]
    command = parser.parse_args(argv)
    command.extra_words, command.remote_argv = words, None
    return command


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """The terminal in raw mode for the block; its previous mode back however it ends."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _window_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 24, 80
    return max(1, min(size.lines, 1000)), max(1, min(size.columns, 1000))


class Terminal:
    """One interactive terminal: attach, pump both ways, reattach after a drop."""

    def __init__(self, ctx: Context, terminal_id: str, stdin_fd: int, stdout_fd: int) -> None:
        self.ctx = ctx
        self.terminal_id = terminal_id
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.exit: Exit | None = None
        # Control frames asked for by signal handlers, sent by the attachment's own task.
        self._controls_wanted = asyncio.Event()
        self._resize_wanted = False
        self._close_wanted = False

    async def run(self) -> int:
        """Attach (and reattach) until the shell exits; return its exit code."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGWINCH, self._resized)
        for signum in (signal.SIGHUP, signal.SIGTERM):
            loop.add_signal_handler(signum, self._hang_up)
        try:
            attempt = 0
            delays = backoff_delays(0.25, 4.0)  # reattach schedule (full jitter)
            while True:
                rows, cols = _window_size(self.stdout_fd)
                params = {"rows": str(rows), "cols": str(cols)}
                term = self.ctx.env.get("TERM")
                if term:
                    params["term"] = term
                try:
                    ws = await connect_channel(
                        self.ctx,
                        f"/ws/websh/{self.terminal_id}/",
                        params=params,
                        work_session=self.ctx.work_session,
                    )
                except CliError:
                    if attempt == 0 or attempt >= REATTACH_ATTEMPTS:
                        raise
                    attempt += 1
                    await asyncio.sleep(next(delays))
                    continue
                code, reason = await self._attached(ws)
                ended = _ended_by_gate(code, reason) or self._session_ended()
                if ended is not None:
                    raise ended
                if self.exit is not None:
                    return self.exit.code
                if code not in _LOST or attempt >= REATTACH_ATTEMPTS:
                    raise CliError(_closed_message(code, reason), code="WEBSH_CLOSED")
                attempt += 1
                self._notice("connection lost; reattaching")
                await asyncio.sleep(next(delays))
        finally:
            for signum in (signal.SIGWINCH, signal.SIGHUP, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    async def _attached(self, ws: ClientConnection) -> tuple[int, str]:
        """Pump until the websocket closes; return its close code and reason."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)

        def readable() -> None:
            try:
                data = os.read(self.stdin_fd, 65536)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(self.stdin_fd)
                return
            queue.put_nowait(data)  # room is certain: reading stops while the queue is full
            if queue.full():  # the link is slow: stop reading the keyboard until it drains
                loop.remove_reader(self.stdin_fd)

        async def upstream() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    data = await queue.get()
                    await ws.send(data)
                    if queue.empty():
                        loop.add_reader(self.stdin_fd, readable)

        loop.add_reader(self.stdin_fd, readable)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(upstream()), tg.create_task(self._send_controls(ws))]
                try:
                    async for message in ws:
                        if isinstance(message, bytes):
                            _write_all(self.stdout_fd, message)
                        else:
                            self._control(message)
                except ConnectionClosed:
                    pass
                finally:
                    for task in tasks:
                        task.cancel()
        finally:
            loop.remove_reader(self.stdin_fd)
        return ws.protocol.close_code or 1006, ws.protocol.close_reason or ""

    def _session_ended(self) -> ControlPlaneError | None:
        """If the terminal's work session has ended (revoked, expired, ...), the error
        that says so: the control plane ends a session's terminals with it, and the shell
        then only reports the hang-up (129)."""
        session_id = self.ctx.work_session
        if not session_id:
            return None
        try:
            session = self.ctx.client().get(f"{SESSIONS}{quote(session_id, safe='')}/")
        except AgentctlError:
            return None
        status = str(session.get("status")) if isinstance(session, dict) else "active"
        if status == "active":
            return None
        code = SESSION_ENDED_CODES.get(status, "work_session_not_usable")
        return ControlPlaneError(403, code, f"work session {session_id} is {status}", "websh")

    def _control(self, text: str) -> None:
        try:
            frame = decode_agent_frame(text)
        except ProtocolViolation:
            return  # a newer agent's frame: ignore it
        if isinstance(frame, Exit):
            self.exit = frame
        elif isinstance(frame, WebshError):
            self._notice(f"the agent refused a control frame: {frame.message}")

    def _resized(self) -> None:
        self._resize_wanted = True
        self._controls_wanted.set()

    def _hang_up(self) -> None:
        # The local terminal went away: end the remote shell too, as ssh does.
        self._close_wanted = True
        self._controls_wanted.set()

    async def _send_controls(self, ws: ClientConnection) -> None:
        """Send the control frames the signal handlers asked for, in this attachment."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self._controls_wanted.wait()
                self._controls_wanted.clear()
                if self._resize_wanted:
                    self._resize_wanted = False
                    rows, cols = _window_size(self.stdout_fd)
                    await ws.send(json.dumps({"type": "resize", "rows": rows, "cols": cols}))
                if self._close_wanted:
                    await ws.send('{"type":"close"}')

    def _notice(self, text: str) -> None:
        _write_all(sys.stderr.fileno(), f"\r\nagentctl: {text}\r\n".encode())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _ended_by_gate(code: int, reason: str) -> AgentctlError | None:
    """A close with 4403 and a gate or token code: the error to exit 3 with."""
    if code != CLOSE_REFUSED:
        return None
    try:
        detail = json_loads(reason)
        gate_code, text = str(detail["code"]), str(detail.get("detail") or "")
    except (ValueError, KeyError, TypeError):
        return None
    if gate_code.startswith("work_session_"):
        return ControlPlaneError(403, gate_code, text or gate_code, "websh")
    if gate_code == "token_revoked":
        return CliError(
            f"the terminal was closed: {text or 'the token was revoked'} ({gate_code})",
            exit_code=EXIT_GATE_DENIED,
            code=gate_code,
        )
    return None


def _closed_message(code: int, reason: str) -> str:
    try:
        detail = json_loads(reason)
    except ValueError:
        detail = None
    if isinstance(detail, dict) and "code" in detail:
        return f"the terminal was refused: {detail['code']}: {detail.get('detail', '')}"
    return f"the terminal closed ({code}{': ' + reason if reason else ''})"
