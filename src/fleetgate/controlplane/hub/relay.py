"""The relay between a client's channel websocket and the agent's.

Frames are copied as they are (text stays text, bytes stay bytes), one at a time: the next
frame is read only after the previous one was handed to the other side's transport, so a
slow reader slows the writer on the far end instead of growing a buffer here. When one
side closes, the other is closed with the same code and reason.
"""

from __future__ import annotations

import asyncio

import structlog
from starlette.websockets import WebSocket, WebSocketState

from fleetgate.shared.protocol.channels import CLOSE_INTERNAL, CLOSE_NORMAL


__all__ = ["close_websocket", "forwardable", "relay"]

log = structlog.get_logger("controlplane.relay")

_NO_STATUS = 1005
_ABNORMAL = 1006


async def relay(client: WebSocket, agent: WebSocket) -> None:
    """Copy frames both ways until either side closes; then close the other one."""
    async with asyncio.TaskGroup() as tg:
        up = tg.create_task(_pump(client, agent, "client"), name="relay-up")
        down = tg.create_task(_pump(agent, client, "agent"), name="relay-down")
        # The first direction to end ends the relay: the other side is closed by it.
        up.add_done_callback(lambda _: down.cancel())
        down.add_done_callback(lambda _: up.cancel())


async def _pump(src: WebSocket, dst: WebSocket, name: str) -> None:
    """Copy ``src`` to ``dst``; when ``src`` ends, close ``dst`` the same way.

    Cancelled (the other direction ended first and closed ``src``), it closes nothing.
    """
    try:
        code, reason = await _copy(src, dst, name)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken transport, on either side
        log.debug("channel.relay_broken", side=name, error=type(exc).__name__)
        code, reason = CLOSE_INTERNAL, f"{name} connection lost"
    await close_websocket(dst, code, reason)


async def _copy(src: WebSocket, dst: WebSocket, name: str) -> tuple[int, str]:
    while True:
        message = await src.receive()
        if message["type"] == "websocket.disconnect":
            return forwardable(message.get("code"), message.get("reason"), name)
        data = message.get("bytes")
        if data is not None:
            await dst.send({"type": "websocket.send", "bytes": data})
        else:
            await dst.send({"type": "websocket.send", "text": message.get("text") or ""})


def forwardable(code: int | None, reason: str | None, name: str) -> tuple[int, str]:
    """A close code that may be sent on: 1005 and 1006 only describe what was received."""
    if code is None or code == _NO_STATUS:
        return CLOSE_NORMAL, reason or ""
    if code == _ABNORMAL:
        return CLOSE_INTERNAL, f"{name} connection lost"
    return code, reason or ""


async def close_websocket(websocket: WebSocket, code: int, reason: str = "") -> None:
    """Close ``websocket`` unless it is already closed; errors of a dead socket are ignored."""
    if websocket.application_state != WebSocketState.CONNECTED:
        return
    try:
        await websocket.close(code=code, reason=reason[:120])
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - closing a dead socket may fail any way
        log.debug("channel.close_failed", error=type(exc).__name__)
