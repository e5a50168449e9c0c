"""What both directions of a file transfer over a ``files`` channel share (asyncio).

An upload (``fileupload``) reads the local file in chunks, sends them as binary frames
from the offset the agent reports in ``ready``, then ``end`` with the whole file's size
and SHA-256; the agent answers ``done`` once the file is durable and in place. A
download (``filedownload``) writes the frames to a hidden part file beside the target,
checks the SHA-256 of ``done`` and renames the part file into place. Either way a dropped
connection is retried and the transfer resumes from what is already through: this module
opens the channel, reads its control frames, tells a refusal from a drop and retries.
Directories are in ``filetrees``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from fleetgate.agentctl.channel import connect_channel
from fleetgate.agentctl.context import Context
from fleetgate.agentctl.errors import CliError
from fleetgate.shared.backoff import backoff_delays


__all__ = [
    "CHUNK_BYTES",
    "RETRIES",
    "Closing",
    "Dropped",
    "Options",
    "Report",
    "TransferFailed",
    "closed_error",
    "control_json",
    "hash_prefix",
    "open_channel",
    "open_once",
    "recv_control",
    "with_retries",
]

CHUNK_BYTES = 2 << 20
FILES_PATH = "/ws/files/"
RETRIES = 5
"""Resumptions of a transfer after a dropped connection (delays from shared.backoff)."""

Report = Callable[[int], None]
"""Called with the number of bytes of the file that are through so far."""


@dataclass
class Options:
    """What every transfer of one invocation shares."""

    server: str
    user: str | None = None
    group: str | None = None
    overwrite: bool = False
    work_session: str | None = None


class TransferFailed(CliError):
    """The agent refused or failed the transfer (its ``error`` frame)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=f"files_{code}")
        self.agent_code = code


class Dropped(Exception):
    """The connection ended before the transfer did: worth another attempt.

    ``unreachable`` carries the error when the control plane could not be reached at all:
    on the first attempt that is reported at once (nothing was ever connected to resume).
    """

    def __init__(self, message: str, unreachable: CliError | None = None) -> None:
        super().__init__(message)
        self.unreachable = unreachable


async def open_channel(ctx: Context, opts: Options, **fields: object) -> ClientConnection:
    """Connect ``/ws/files/`` for one transfer (refusals raise ControlPlaneError/CliError)."""
    # No user: the control plane picks (root for superusers, else your server account).
    params = {"server": opts.server}
    if opts.user:
        params["user"] = opts.user
    if opts.group:
        params["group"] = opts.group
    for key, value in fields.items():
        if value is None or value is False:
            continue
        params[key] = "true" if value is True else str(value)
    try:
        return await connect_channel(ctx, FILES_PATH, params=params, work_session=opts.work_session)
    except CliError as exc:
        if exc.code == "CONNECTION_FAILED":
            raise Dropped(str(exc), unreachable=exc) from exc
        raise


async def open_once(ctx: Context, opts: Options, **fields: object) -> ClientConnection:
    """`open_channel` for a transfer that is not resumed: a failure to connect is final."""
    try:
        return await open_channel(ctx, opts, **fields)
    except Dropped as exc:
        raise exc.unreachable or CliError(str(exc)) from None


def closed_error(exc: ConnectionClosed) -> Exception:
    """A closed channel: a refusal (4xxx with a JSON reason) or a drop worth retrying."""
    frame = exc.rcvd
    if frame is not None and frame.code == 1011:
        return TransferFailed("internal", "the transfer failed on the agent (see its log)")
    if frame is not None and frame.code in (4400, 4403):
        try:
            reason = control_json(frame.reason)
            return TransferFailed(str(reason.get("code")), str(reason.get("detail")))
        except (CliError, AttributeError):
            return TransferFailed("refused", frame.reason or "refused by the agent")
    return Dropped(str(exc))


def control_json(text: str) -> Any:
    """A control frame's JSON value. The standard library's parser: the agent's few flat
    control frames do not need pydantic_core's (``shared.jsontext``), whose import was 12
    ms of every start; nesting deep enough to exhaust the stack ends in RecursionError,
    refused like any other malformed frame.

    Raises:
        CliError: the text is not JSON.
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise CliError("the agent sent a malformed control frame") from None


async def recv_control(ws: ClientConnection) -> dict[str, Any]:
    """The next frame, which must be a control object; ``error`` raises TransferFailed."""
    try:
        frame = await ws.recv()
    except ConnectionClosed as exc:
        raise closed_error(exc) from None
    if isinstance(frame, bytes):
        raise CliError("the agent sent data where a control frame was expected")
    obj = control_json(frame)
    if not isinstance(obj, dict):
        raise CliError("the agent sent a malformed control frame")
    if obj.get("type") == "error":
        raise TransferFailed(str(obj.get("code")), str(obj.get("message")))
    return obj


async def with_retries(ctx: Context, attempt: Callable[[], Any], retries: int) -> Any:
    """Run ``attempt`` again after a drop, with a growing delay, at most ``retries`` times."""
    delays = backoff_delays(0.5, 5.0)
    for number in range(retries + 1):
        try:
            return await attempt()
        except Dropped as exc:
            if number == 0 and exc.unreachable is not None:
                raise exc.unreachable from None  # never connected: nothing to resume
            if number == retries:
                raise CliError(f"the connection dropped too often: {exc}") from None
            delay = next(delays)
            ctx.out.info(f"agentctl: connection dropped ({exc}); resuming in {delay:.1f}s")
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def hash_prefix(fd: int, length: int, hasher: Any) -> None:
    """Hash the first ``length`` bytes of ``fd``: the part a resumed transfer skips."""
    done = 0
    while done < length:
        chunk = os.pread(fd, min(CHUNK_BYTES, length - done), done)
        if not chunk:
            raise CliError("the local file shrank while it was read")
        hasher.update(chunk)
        done += len(chunk)


class Closing:
    """``aclosing`` adapter: close the websocket however the attempt ends."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def aclose(self) -> None:
        """Close the websocket (at most 5 s; a failure to close is no news)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
