"""Starting a file worker as the user, and relaying a channel to its pipes (asyncio).

The agent never reads or writes the user's files itself: it starts the worker
(``python -I -m fleetgate.agent.files.worker``) with the user's exact uid, gid and groups (setpriv,
as commands are started) and a clean environment, then copies frames: websocket frames
to the worker's stdin, the worker's stdout frames to the websocket, one frame at a time in
each direction with every write awaited, so memory stays bounded by a frame or two
whatever the file size. The worker widens its pipes to 1 MiB so a chunk crosses in one go.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
from typing import Any, Protocol

import structlog

from fleetgate.agent.errors import ChannelClosed
from fleetgate.agent.exec.identity import Identity, build_environment
from fleetgate.agent.exec.spawn import find_setpriv, needs_switch, privilege_argv
from fleetgate.shared.files.framing import (
    DATA,
    HEADER,
    TEXT,
    decode_header,
    encode_header,
    encode_text,
)
from fleetgate.shared.protocol.files import FileEnd, FileError, decode_file_frame


__all__ = ["Link", "Outcome", "relay_worker", "start_worker"]

log = structlog.get_logger(__name__)

WORKER_ARGV = (sys.executable, "-I", "-m", "fleetgate.agent.files.worker")
PIPE_BYTES = 1 << 20
STDERR_KEEP = 8192
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
REAP_GRACE = 5.0
"""Seconds a worker gets to finish after its stdin closed (an upload fsyncs its part)."""


class Link(Protocol):
    """The channel, as the relay uses it (``fleetgate.agent.backhaul.ChannelLink``)."""

    async def recv(self) -> bytes | str: ...

    async def send(self, data: bytes | str) -> None: ...


class Outcome:
    """What the worker said last (``done`` or ``error``) and how it exited."""

    def __init__(self) -> None:
        self.final: dict[str, Any] | None = None
        self.returncode: int | None = None
        self.stderr = b""


class PipeReader:
    """Reads the worker's stdout straight into the caller's buffer (no stream buffer, no
    copy per frame beyond the kernel's), waiting for readability on the event loop."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd

    async def readinto(self, view: memoryview) -> bool:
        """Fill ``view``; False on EOF before its first byte (EOFError after it)."""
        got = 0
        while got < len(view):
            try:
                n = os.readv(self.fd, [view[got:]])
            except BlockingIOError:
                await self._readable()
                continue
            if n == 0:
                if got == 0:
                    return False
                raise EOFError("the worker's output ended inside a frame")
            got += n
        return True

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(self.fd, ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_reader(self.fd)

    def close(self) -> None:
        """Close the read end."""
        os.close(self.fd)


async def start_worker(identity: Identity) -> tuple[asyncio.subprocess.Process, PipeReader]:
    """Start a worker as ``identity`` in its own session (killed as a group)."""
    argv = list(WORKER_ARGV)
    switch = needs_switch(identity)
    setpriv = find_setpriv()
    if switch and setpriv is not None:
        argv, switch = privilege_argv(setpriv, identity, argv), False
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(read_fd, _F_SETPIPE_SZ, PIPE_BYTES)
    try:
        proc = await _spawn(argv, identity, switch, write_fd)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # ours must go, or the pipe never reports EOF
    return proc, PipeReader(read_fd)


async def _spawn(
    argv: list[str], identity: Identity, switch: bool, stdout: int
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=build_environment(identity, {}),
        cwd="/",
        start_new_session=True,
        user=identity.uid if switch else None,
        group=identity.gid if switch else None,
        extra_groups=list(identity.groups) if switch else None,
    )


async def relay_worker(
    link: Link, proc: asyncio.subprocess.Process, stdout: PipeReader, request: dict[str, Any]
) -> Outcome:
    """Hand ``request`` to the worker, then relay until it exits; always reaps it."""
    outcome = Outcome()
    assert proc.stdin is not None
    assert proc.stderr is not None
    try:
        async with asyncio.TaskGroup() as tg:
            errors = tg.create_task(_keep_stderr(proc.stderr, outcome))
            proc.stdin.write(encode_text(request))
            up = tg.create_task(_client_to_worker(link, proc.stdin))
            await _worker_to_client(proc, stdout, link, outcome)
            up.cancel()
            outcome.returncode = await proc.wait()
            await errors
    finally:
        stdout.close()
        await _reap(proc)
    if outcome.returncode not in (0, 1, None) or (outcome.final is None and outcome.stderr):
        log.warning(
            "files.worker_failed",
            returncode=outcome.returncode,
            stderr=outcome.stderr.decode(errors="replace")[-2000:],
        )
    return outcome


async def _client_to_worker(link: Link, stdin: asyncio.StreamWriter) -> None:
    """Client frames to the worker; a client that leaves closes the worker's stdin."""
    try:
        while True:
            frame = await link.recv()
            if isinstance(frame, str):
                # Checked here (cheaply, with the models) so a bad frame gets a clear error
                # before the worker sees it; the worker checks again.
                message = decode_file_frame(frame)
                if not isinstance(message, FileEnd):
                    raise ValueError(f"a client cannot send {message.type!r}")  # noqa: TRY004
                stdin.write(encode_text(message.model_dump()))
            else:
                stdin.write(encode_header(DATA, len(frame)))
                stdin.write(frame)
            await stdin.drain()
    except ChannelClosed:
        pass
    except ValueError as exc:  # pydantic's ValidationError included
        log.info("files.bad_client_frame", error=str(exc)[:200])
        with contextlib.suppress(ChannelClosed):
            error = FileError(code="malformed", message=f"bad control frame: {exc}"[:500])
            await link.send(error.model_dump_json())
    except (BrokenPipeError, ConnectionResetError):
        return  # the worker is gone; its last frame tells why
    finally:
        with contextlib.suppress(OSError):
            stdin.close()


async def _worker_to_client(
    proc: asyncio.subprocess.Process, stdout: PipeReader, link: Link, outcome: Outcome
) -> None:
    """Worker frames to the client, until the worker's stdout ends or the client leaves
    (then the worker is killed: what it would still send has nowhere to go)."""
    try:
        await _copy_out(stdout, link, outcome)
    except ChannelClosed:
        _kill(proc)


async def _copy_out(stdout: PipeReader, link: Link, outcome: Outcome) -> None:
    header = bytearray(HEADER.size)
    buf = bytearray(PIPE_BYTES)
    while await stdout.readinto(memoryview(header)):
        kind, length = decode_header(bytes(header))
        if length > len(buf):
            buf = bytearray(length)
        payload = memoryview(buf)[:length]
        await stdout.readinto(payload)
        if kind == TEXT:
            text = bytes(payload).decode()
            with contextlib.suppress(ValueError):
                message = decode_file_frame(text)
                if message.type in ("done", "error"):
                    outcome.final = message.model_dump()
            await link.send(text)
        else:
            # The link copies (masks) the payload before send() returns, so the buffer
            # can be filled again at once.
            await link.send(payload)  # type: ignore[arg-type]


async def _keep_stderr(stderr: asyncio.StreamReader, outcome: Outcome) -> None:
    tail: collections.deque[bytes] = collections.deque()
    kept = 0
    while chunk := await stderr.read(4096):
        tail.append(chunk)
        kept += len(chunk)
        while kept - len(tail[0]) >= STDERR_KEEP:
            kept -= len(tail.popleft())
    outcome.stderr = b"".join(tail)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Wait for the worker; after a grace period, kill its process group."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    if proc.returncode is not None:
        return
    try:
        async with asyncio.timeout(REAP_GRACE):
            await asyncio.shield(proc.wait())
            return
    except TimeoutError:
        pass
    except asyncio.CancelledError:
        _kill(proc)
        await asyncio.shield(proc.wait())
        raise
    _kill(proc)
    await proc.wait()


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
