"""Starting a file worker as the user, and relaying a channel to it (asyncio).

The agent never opens the user's files itself: it starts the worker
(``python -I -m fleetgate.agent.files.worker``) with the user's exact uid, gid and groups (setpriv,
as commands are started) and a clean environment, then copies frames: websocket frames
to the worker's stdin, the worker's stdout frames to the websocket, one frame at a time in
each direction with every write awaited, so memory stays bounded by a frame or two
whatever the file size.

The worker's stdout is a Unix socket: for a single file the worker hands the opened
descriptor over (a ``handover`` frame carrying it, SCM_RIGHTS) and the agent moves the
bytes itself (:mod:`fleetgate.agent.files.handover`), one copy less per hop; trees keep
streaming through the worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
from typing import Any, Protocol

import structlog

from fleetgate.agent.errors import ChannelClosed
from fleetgate.agent.exec.identity import Identity, build_environment
from fleetgate.agent.exec.spawn import find_setpriv, needs_switch, privilege_argv
from fleetgate.agent.files.handover import UploadSink, check_handed
from fleetgate.agent.files.sending import send_download
from fleetgate.shared.errors import TransferError
from fleetgate.shared.files.framing import (
    DATA,
    HEADER,
    TEXT,
    decode_header,
    decode_text,
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
_HANDOVER = b'{"type":"handover"'
"""How the worker's handover frame begins (its compact JSON, ``type`` first)."""
_MAX_FDS = 4
"""Descriptors one read may carry (the worker sends one; more are closed at once)."""
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
    """Reads the worker's stdout socket straight into the caller's buffer (no stream buffer,
    no copy per frame beyond the kernel's), waiting for readability on the event loop.

    Descriptors that come along (``handover``) are kept, close-on-exec, for :meth:`take_fd`.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fds: list[int] = []

    async def readinto(self, view: memoryview) -> bool:
        """Fill ``view``; False on EOF before its first byte (EOFError after it)."""
        got = 0
        while got < len(view):
            try:
                n, ancdata, _, _ = self.sock.recvmsg_into(
                    [view[got:]], socket.CMSG_SPACE(_MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                await self._readable()
                continue
            self._keep_fds(ancdata)
            if n == 0:
                if got == 0:
                    return False
                raise EOFError("the worker's output ended inside a frame")
            got += n
        return True

    def _keep_fds(self, ancdata: list[tuple[int, int, bytes]]) -> None:
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(data) - len(data) % 4
                self.fds.extend(int.from_bytes(data[i : i + 4], sys.byteorder, signed=True)
                                for i in range(0, usable, 4))  # fmt: skip

    def discard_fds(self) -> None:
        """Close descriptors that came with a frame that is not a handover (none should)."""
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)

    def take_fd(self) -> int:
        """The descriptor that came with the last frame (others are closed).

        Raises:
            TransferError: none came.
        """
        fds, self.fds = self.fds, []
        for extra in fds[1:]:
            os.close(extra)
        if not fds:
            raise TransferError("internal", "the worker's handover carried no descriptor")
        return fds[0]

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(self.sock.fileno(), ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_reader(self.sock.fileno())

    def close(self) -> None:
        """Close the read end (and any descriptor nobody took)."""
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.sock.close()


async def start_worker(identity: Identity) -> tuple[asyncio.subprocess.Process, PipeReader]:
    """Start a worker as ``identity`` in its own session (killed as a group)."""
    argv = list(WORKER_ARGV)
    switch = needs_switch(identity)
    setpriv = find_setpriv()
    if switch and setpriv is not None:
        argv, switch = privilege_argv(setpriv, identity, argv), False
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for option in (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            theirs.setsockopt(socket.SOL_SOCKET, option, PIPE_BYTES)  # a chunk in one go
            break
    try:
        proc = await _spawn(argv, identity, switch, theirs.fileno())
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()  # ours must go, or the socket never reports EOF
    return proc, PipeReader(ours)


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


class Route:
    """Where the client's data frames go: the worker's stdin, or (once an upload was
    handed over) the agent's own :class:`UploadSink`."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        self.sink: UploadSink | None = None

    def close(self) -> None:
        """Let go of the handed-over file (after the write in flight)."""
        if self.sink is not None:
            self.sink.close()


async def relay_worker(
    link: Link, proc: asyncio.subprocess.Process, stdout: PipeReader, request: dict[str, Any]
) -> Outcome:
    """Hand ``request`` to the worker, then relay until it exits; always reaps it."""
    outcome = Outcome()
    route = Route(request)
    assert proc.stdin is not None
    assert proc.stderr is not None
    try:
        async with asyncio.TaskGroup() as tg:
            errors = tg.create_task(_keep_stderr(proc.stderr, outcome))
            proc.stdin.write(encode_text(request))
            up = tg.create_task(_client_to_worker(link, proc.stdin, route))
            await _worker_to_client(proc, stdout, link, outcome, route)
            up.cancel()
            outcome.returncode = await proc.wait()
            await errors
    finally:
        route.close()
        stdout.close()
        await _reap(proc)
    if outcome.returncode not in (0, 1, None) or (outcome.final is None and outcome.stderr):
        log.warning(
            "files.worker_failed",
            returncode=outcome.returncode,
            stderr=outcome.stderr.decode(errors="replace")[-2000:],
        )
    return outcome


async def _client_to_worker(link: Link, stdin: asyncio.StreamWriter, route: Route) -> None:
    """Client frames to the worker (or the sink); a client that leaves closes its stdin."""
    try:
        while True:
            frame = await link.recv()
            if isinstance(frame, str):
                # Checked here (cheaply, with the models) so a bad frame gets a clear error
                # before the worker sees it; the worker checks again.
                message = decode_file_frame(frame)
                if not isinstance(message, FileEnd):
                    raise ValueError(f"a client cannot send {message.type!r}")  # noqa: TRY004
                if route.sink is not None:
                    stdin.write(encode_text(await _end(route.sink, message)))
                else:
                    stdin.write(encode_text(message.model_dump()))
            elif route.sink is not None:
                try:
                    await route.sink.put(frame)
                except TransferError as exc:
                    stdin.write(encode_text(_abort(exc)))
                    await stdin.drain()
                    return  # the worker reports it and removes nothing a resume needs
            else:
                stdin.write(encode_header(DATA, len(frame)))
                stdin.write(frame)
            await stdin.drain()
    except ChannelClosed:
        if route.sink is not None:
            await route.sink.drain()  # the worker fsyncs what arrived, for a resume
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


async def _end(sink: UploadSink, message: FileEnd) -> dict[str, Any]:
    try:
        return await sink.end(message.size, message.sha256)
    except TransferError as exc:
        return _abort(exc)


def _abort(exc: TransferError) -> dict[str, Any]:
    return {"type": "abort", "code": exc.code, "message": exc.message[:4000]}


async def _worker_to_client(
    proc: asyncio.subprocess.Process,
    stdout: PipeReader,
    link: Link,
    outcome: Outcome,
    route: Route,
) -> None:
    """Worker frames to the client, until the worker's stdout ends or the client leaves
    (then the worker is killed: what it would still send has nowhere to go)."""
    try:
        await _copy_out(stdout, link, outcome, route)
    except ChannelClosed:
        _kill(proc)


async def _copy_out(stdout: PipeReader, link: Link, outcome: Outcome, route: Route) -> None:
    header = bytearray(HEADER.size)
    buf = bytearray(PIPE_BYTES)
    while await stdout.readinto(memoryview(header)):
        kind, length = decode_header(bytes(header))
        if length > len(buf):
            buf = bytearray(length)
        payload = memoryview(buf)[:length]
        await stdout.readinto(payload)
        if kind == TEXT and payload[: len(_HANDOVER)] == _HANDOVER:
            await _handed_over(stdout, link, outcome, route, decode_text(bytes(payload)))
            continue
        stdout.discard_fds()  # only a handover carries one; nothing else piles up here
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


async def _handed_over(
    stdout: PipeReader, link: Link, outcome: Outcome, route: Route, handover: dict[str, Any]
) -> None:
    """Take the worker's descriptor: an upload's sink, or a whole download sent from here."""
    request = route.request
    try:
        fd = stdout.take_fd()
        try:
            check_handed(fd)
            if not request.get("handover") or request.get("recursive") or route.sink is not None:
                raise TransferError("internal", "an unexpected handover from the worker")
            if request["op"] == "upload":
                size, limit = request.get("size"), int(request["max_file_bytes"])
                route.sink = UploadSink(fd, int(handover["offset"]), size, limit)
                return
        except BaseException:
            os.close(fd)
            raise
        outcome.final = await send_download(link, fd, handover, int(request["chunk_bytes"]))
    except TransferError as exc:
        outcome.final = {"type": "error", "code": exc.code, "message": exc.message[:4000]}
        await link.send(FileError(code=exc.code, message=exc.message[:4000]).model_dump_json())


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
