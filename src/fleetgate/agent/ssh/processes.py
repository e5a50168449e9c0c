"""What an SSH session runs: a recorded shell on a PTY, a command, or ``sftp-server``.

- **shell** (with a PTY): the websh code runs it (:class:`TerminalManager`): exact uid,
  gid and groups, login environment, its own process session, sudo mediation, asciicast
  recording shipped to the control plane. :class:`TerminalBridge` makes the SSH session
  look like a websh channel to it (terminal bytes, ``resize``, ``close``, ``exit``).
- **exec** (``ssh host cmd``, ``rsync --server``, Ansible): the user's login shell with
  ``-c``, started through the command runner's privilege drop (setpriv) in a new process
  session with a clean environment; stdin, stdout and stderr are relayed; the exit status
  goes back to the client.
- **sftp** (``sftp``, and ``scp``, which speaks SFTP): OpenSSH's ``sftp-server`` as the
  user the same way; its log (``-e -l INFO``) tells which files were transferred.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from fleetgate.agent.errors import ChannelClosed
from fleetgate.agent.exec.identity import DEFAULT_SHELL, Identity, build_environment
from fleetgate.agent.exec.spawn import needs_switch, privilege_argv


__all__ = [
    "READ_BYTES",
    "PidHook",
    "TerminalBridge",
    "login_shell",
    "parse_sftp_log",
    "run_process",
]

log = structlog.get_logger(__name__)

READ_BYTES = 256 * 1024
KILL_GRACE = 2.0

_SFTP_CLOSE = re.compile(
    r'close "(?P<path>(?:[^"\\]|\\.)*)" bytes read (?P<r>\d+) written (?P<w>\d+)'
)


def parse_sftp_log(line: str) -> tuple[str, int, int] | None:
    """``(path, bytes_read, bytes_written)`` of an ``sftp-server`` ``close`` log line."""
    match = _SFTP_CLOSE.search(line)
    if match is None:
        return None
    return match["path"], int(match["r"]), int(match["w"])


class TerminalBridge:
    """An SSH session with a PTY, seen by the websh terminal as its channel link.

    ``recv`` hands the terminal what the client types and, as ``resize`` control frames,
    window changes; the end of the SSH session becomes a ``close`` frame, so the terminal
    ends instead of waiting for a reattach. ``send`` writes terminal output to the client
    and keeps the ``exit`` frame's status.
    """

    def __init__(self, process: Any) -> None:
        self._process = process
        self.exit_code: int | None = None
        self._closed = False

    async def recv(self) -> bytes | str:
        """The next input, resize or close (then never again: the terminal is ending)."""
        import asyncssh  # loaded with the SSH server, never at agent start

        if self._closed:
            await asyncio.Event().wait()
        try:
            data = await self._process.stdin.read(READ_BYTES)
        except asyncssh.TerminalSizeChanged as change:
            rows, cols = (max(1, min(4096, n)) for n in (change.height, change.width))
            return json.dumps({"type": "resize", "rows": rows, "cols": cols})
        except (asyncssh.BreakReceived, asyncssh.SignalReceived):
            return b"\x03"
        except (OSError, asyncssh.Error):
            data = b""
        if not data:
            self._closed = True
            return json.dumps({"type": "close"})
        return bytes(data)

    async def send(self, data: bytes | str) -> None:
        """Terminal output to the client; ``exit`` keeps the status."""
        if isinstance(data, str):
            frame = json.loads(data)
            if frame.get("type") == "exit":
                self.exit_code = int(frame.get("code") or 0)
            return
        try:
            self._process.stdout.write(data)
            await self._process.stdout.drain()
        except (OSError, BrokenPipeError) as exc:
            raise ChannelClosed(1006, "the SSH session closed") from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Nothing to do: the SSH session ends when the handler returns."""


LineSink = Callable[[str], Awaitable[None]]
PidHook = Callable[[int], Awaitable[None] | None]


async def run_process(
    process: Any,
    identity: Identity,
    argv: Sequence[str],
    *,
    cwd: str,
    setpriv: str | None,
    stderr_lines: LineSink | None = None,
    on_started: PidHook | None = None,
    on_ended: PidHook | None = None,
) -> int:
    """Run ``argv`` as ``identity`` for an SSH session and relay its standard streams.

    With ``stderr_lines`` the child's stderr is read as log lines instead of being sent
    to the client. ``on_started(pid)`` / ``on_ended(pid)`` tell the sudo mediation which
    process session (its id is the pid) belongs to the work session. Returns the exit
    status (128+n for signal n). Cancelling kills the process group and reaps it.
    """
    argv = list(argv)
    switch = needs_switch(identity)
    if switch and setpriv is not None:
        argv, switch = privilege_argv(setpriv, identity, argv), False
    env = build_environment(identity, {})
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
        user=identity.uid if switch else None,
        group=identity.gid if switch else None,
        extra_groups=list(identity.groups) if switch else None,
        limit=READ_BYTES,
    )
    _widen_pipes(proc)
    await _call(on_started, proc.pid)
    try:
        async with asyncio.TaskGroup() as tg:
            feeding = tg.create_task(_feed(process, proc))
            outputs = [tg.create_task(_copy(proc.stdout, process.stdout))]
            if stderr_lines is None:
                outputs.append(tg.create_task(_copy(proc.stderr, process.stderr)))
            else:
                outputs.append(tg.create_task(_lines(proc.stderr, stderr_lines)))
            code = await proc.wait()
            for output in outputs:
                await output  # to the pipes' EOF: everything the command wrote is delivered
            # The client may keep its side open until the session ends (rsync does):
            # input is not awaited.
            feeding.cancel()
    except BaseException:
        _kill_group(proc)
        with contextlib.suppress(ProcessLookupError, ChildProcessError, TimeoutError):
            async with asyncio.timeout(KILL_GRACE):
                await asyncio.shield(proc.wait())
        raise
    finally:
        _kill_group(proc)  # what the command left behind in its session
        await _call(on_ended, proc.pid)
    return 128 - code if code < 0 else code


async def _call(hook: PidHook | None, pid: int) -> None:
    if hook is not None:
        result = hook(pid)
        if result is not None:
            await result


async def _feed(process: Any, proc: asyncio.subprocess.Process) -> None:
    """Client input to the child's stdin; EOF closes it."""
    stdin = proc.stdin
    assert stdin is not None
    try:
        while True:
            try:
                data = await process.stdin.read(READ_BYTES)
            except Exception:  # noqa: BLE001 - a signal or break from the client: stop input
                data = b""
            if not data:
                break
            stdin.write(data)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        return  # the child stopped reading; its exit ends the session
    finally:
        with contextlib.suppress(OSError):
            stdin.close()


async def _copy(reader: asyncio.StreamReader | None, writer: Any) -> None:
    assert reader is not None
    while data := await reader.read(READ_BYTES):
        try:
            writer.write(data)
            await writer.drain()
        except (OSError, BrokenPipeError):
            return  # the client went away; keep reading would only block the child


async def _lines(reader: asyncio.StreamReader | None, sink: LineSink) -> None:
    assert reader is not None
    while line := await reader.readline():
        await sink(line.decode("utf-8", "replace").rstrip("\r\n"))


PIPE_BYTES = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _widen_pipes(proc: asyncio.subprocess.Process) -> None:
    """1 MiB pipes to and from the child (64 KiB by default): bulk transfers (scp, rsync)
    then cost fewer wake-ups per MiB on both sides. Best effort: the kernel may refuse
    (``/proc/sys/fs/pipe-max-size``), and the default still works."""
    for stream in (proc.stdin, proc.stdout):
        transport = getattr(stream, "_transport", None) or getattr(stream, "transport", None)
        fd = None if transport is None else transport.get_extra_info("pipe")
        if fd is None:
            continue
        with contextlib.suppress(OSError, ValueError):
            fcntl.fcntl(fd.fileno(), _F_SETPIPE_SZ, PIPE_BYTES)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def login_shell(identity: Identity) -> str:
    """The shell ``ssh host cmd`` runs ``cmd`` with, as sshd does: the passwd entry's."""
    return identity.shell or DEFAULT_SHELL
