"""Relaying a channel to a file worker started as the user (asyncio).

The agent never opens the user's files itself: it starts the worker
(:mod:`fleetgate.agent.files.workerproc`) as the user, then copies frames: websocket frames
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
import os
from typing import Any, Protocol

import structlog

from fleetgate.agent.errors import ChannelClosed
from fleetgate.agent.files.handover import UploadSink, check_handed
from fleetgate.agent.files.sending import send_download
from fleetgate.agent.files.workerproc import PIPE_BYTES, PipeReader, kill_worker, reap_worker
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


__all__ = ["Link", "Outcome", "relay_worker"]

log = structlog.get_logger(__name__)

STDERR_KEEP = 8192
_HANDOVER = b'{"type":"handover"'
"""How the worker's handover frame begins (its compact JSON, ``type`` first)."""


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
        await reap_worker(proc)
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
        kill_worker(proc)


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
