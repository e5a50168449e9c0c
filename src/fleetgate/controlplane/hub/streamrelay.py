"""The relay of one tunnel stream, whose websockets may carry the next stream.

Like :func:`~fleetgate.controlplane.hub.relay.relay`, frames are copied as they are, one
at a time, and when one side breaks off the other is closed the same way. A side accepted
with ``REUSE_HEADER`` (``fleetgate.shared.protocol.tunnel``) ends a clean stream with an
``end`` frame instead of closing, once both ``eof`` passed here (an ``end`` before its own
``eof`` stands for it: the ``eof`` is passed on). ``end`` itself is passed to no one: the
websocket of the side that said it is kept for that side's next stream, whatever the
other side does afterwards (nothing of this stream goes to it any more), the agent's
given back at once (``agent_kept``), and the relay returns which sides were kept once
both are done. A clean close (1000 after both ``eof``)
of a side that cannot say ``end`` leaves the other side to end its own way.

A pipelined stream (``accepted``: its ``channel.open`` was sent without waiting for the
agent's answer) relays the client's frames at once and the agent's only after the answer
was checked; a refusal ends the relay and is raised, as it would have been before it. The
answer to a ``quiet`` open is the agent's first frame of the stream: relayed first.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from starlette.websockets import WebSocket

from fleetgate.controlplane.errors import ChannelFailed
from fleetgate.controlplane.hub.relay import close_websocket, forwardable
from fleetgate.controlplane.wsprotocol import send_now
from fleetgate.shared.protocol.channels import CLOSE_BAD_REQUEST, CLOSE_INTERNAL, CLOSE_NORMAL
from fleetgate.shared.protocol.tunnel import END_FRAME, EOF_FRAME


__all__ = ["Kept", "relay_stream"]

log = structlog.get_logger("controlplane.relay")


class _Done(enum.Enum):
    KEPT = "kept"  # the side said ``end``: its websocket carries its next stream
    CLEAN = "clean"  # closed cleanly after both eof: the other side ends its own way
    FAILED = "failed"  # the other side was closed (unless it had said ``end``)


@dataclass(frozen=True)
class Kept:
    """Which websockets said ``end`` and stay open for their next stream."""

    client: bool
    agent: bool


@dataclass
class _State:
    eofs: set[str] = field(default_factory=set)  # the sides whose eof was passed on
    ended: set[str] = field(default_factory=set)  # the sides that said ``end``
    answered: bool = True  # the agent's answer to a pipelined open was checked
    refused: ChannelFailed | None = None  # ... and it was a refusal (or none came)


async def relay_stream(
    client: WebSocket,
    agent: WebSocket,
    *,
    client_ends: bool,
    agent_ends: bool,
    accepted: Callable[[], Awaitable[dict[str, Any] | None]] | None = None,
    agent_kept: Callable[[], None] | None = None,
) -> Kept:
    """Relay until both sides are done with the stream; which of them said ``end``.

    ``client_ends`` / ``agent_ends``: that side was accepted with ``REUSE_HEADER``.
    ``accepted``: the check of the agent's answer, still due (a pipelined stream).
    ``agent_kept``: called as soon as the agent said ``end`` (its websocket is not
    touched here after that).

    Raises:
        ChannelFailed: the agent refused the pipelined stream (or did not answer).
    """
    state = _State(answered=accepted is None)
    async with asyncio.TaskGroup() as tg:
        up = tg.create_task(
            _pump(client, agent, ("client", "agent"), client_ends, state), name="stream-up"
        )
        down = tg.create_task(
            _answered_then_pump(accepted, agent, client, agent_ends, state), name="stream-down"
        )
        if agent_kept is not None:
            down.add_done_callback(lambda t: _kept(t) and agent_kept())
        # A direction that broke off ends the relay (its pump closed the other side);
        # while the agent's answer is due, it comes first: a refusal is what the client
        # must be told, not the closed websocket that follows it.
        up.add_done_callback(lambda t: _failed(t) and state.answered and down.cancel())
        down.add_done_callback(lambda t: _failed(t) and up.cancel())
    if state.refused is not None:
        raise state.refused
    return Kept(client=_kept(up), agent=_kept(down))


async def _answered_then_pump(
    accepted: Callable[[], Awaitable[dict[str, Any] | None]] | None,
    agent: WebSocket,
    client: WebSocket,
    ends: bool,
    state: _State,
) -> _Done:
    first = None
    if accepted is not None:
        try:
            first = await accepted()
        except ChannelFailed as exc:
            state.refused = exc
            return _Done.FAILED
        finally:
            state.answered = True
    return await _pump(agent, client, ("agent", "client"), ends, state, first=first)


def _failed(task: asyncio.Task[_Done]) -> bool:
    return task.cancelled() or task.exception() is not None or task.result() is _Done.FAILED


def _kept(task: asyncio.Task[_Done]) -> bool:
    return not task.cancelled() and task.exception() is None and task.result() is _Done.KEPT


async def _pump(
    src: WebSocket,
    dst: WebSocket,
    names: tuple[str, str],
    ends: bool,
    state: _State,
    *,
    first: dict[str, Any] | None = None,
) -> _Done:
    """Copy ``src`` to ``dst`` until ``src`` is done with the stream (see the module),
    starting with ``first`` when ``src``'s first message was received already.
    Cancelled, it closes nothing."""
    name, other = names
    try:
        while True:
            if first is None:
                message = await src.receive()
            else:
                message, first = first, None
            if message["type"] == "websocket.disconnect":
                code, reason = forwardable(message.get("code"), message.get("reason"), name)
                if code == CLOSE_NORMAL and len(state.eofs) == 2:
                    return _Done.CLEAN
                break
            data = message.get("bytes")
            text = message.get("text") or ""
            if ends and data is None and text == END_FRAME:
                if other in state.eofs:
                    if name not in state.eofs:  # the last eof, said by the end
                        state.eofs.add(name)
                        await _send(dst, EOF_FRAME)
                    state.ended.add(name)
                    return _Done.KEPT
                # Before the other side's eof: the stream has not ended.
                code, reason = CLOSE_BAD_REQUEST, f"{name} sent end before the stream ended"
                await close_websocket(src, code, reason)
                break
            if other in state.ended:
                # ``dst`` is done with this stream: only a failure can come now.
                await close_websocket(src, CLOSE_NORMAL)
                return _Done.FAILED
            if data is not None:
                await _send(dst, data)
                continue
            if text == EOF_FRAME:
                state.eofs.add(name)
            await _send(dst, text)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken transport, on either side
        log.debug("channel.relay_broken", side=name, error=type(exc).__name__)
        code, reason = CLOSE_INTERNAL, f"{name} connection lost"
    if other not in state.ended:
        await close_websocket(dst, code, reason)
    return _Done.FAILED


async def _send(dst: WebSocket, frame: bytes | str) -> None:
    """Relay one frame: written at once when the transport takes it (the pump is the only
    sender on ``dst`` while it runs, so frames stay in order), else by the ASGI send,
    which waits until it does."""
    if send_now(dst, frame):
        return
    if isinstance(frame, str):
        await dst.send({"type": "websocket.send", "text": frame})
    else:
        await dst.send({"type": "websocket.send", "bytes": frame})
