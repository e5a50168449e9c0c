"""The relay of one tunnel stream, whose websockets may carry the next stream.

Like :func:`~fleetgate.controlplane.hub.relay.relay`, frames are copied as they are, one
at a time, and when one side closes the other is closed the same way. A side accepted with
``REUSE_HEADER`` (``fleetgate.shared.protocol.tunnel``) ends a clean stream with an ``end``
frame instead of closing: that frame is the side's own word to the control plane and is
never passed on. Once both sides said ``end``, each gets ``end`` back and both websockets
stay open for a later stream (:func:`relay_stream` returns True). Anything else (a close,
a broken transport, only one side able to say ``end``) closes both, as the plain relay; an
``end`` before both ``eof`` were relayed closes both with 4400.
"""

from __future__ import annotations

import asyncio

import structlog
from starlette.websockets import WebSocket

from fleetgate.controlplane.hub.relay import close_websocket, forwardable
from fleetgate.shared.protocol.channels import CLOSE_BAD_REQUEST, CLOSE_INTERNAL, CLOSE_NORMAL
from fleetgate.shared.protocol.tunnel import END_FRAME, EOF_FRAME


__all__ = ["relay_stream"]

log = structlog.get_logger("controlplane.relay")


async def relay_stream(
    client: WebSocket, agent: WebSocket, *, client_ends: bool, agent_ends: bool
) -> bool:
    """Relay until the stream ends; True when it ended with ``end`` from both sides (both
    websockets are then open, quiet and told ``end``), False when they were closed.

    ``client_ends`` / ``agent_ends``: that side was accepted with ``REUSE_HEADER``.
    """
    eofs: set[str] = set()  # the sides whose eof was relayed
    async with asyncio.TaskGroup() as tg:
        ends = (client_ends, agent_ends)
        up = tg.create_task(_pump(client, agent, "client", ends, eofs), name="stream-up")
        down = tg.create_task(
            _pump(agent, client, "agent", (agent_ends, client_ends), eofs), name="stream-down"
        )
        # A direction that ended by a close ends the relay (its pump closed the other
        # side); one that ended with ``end`` leaves the other running (a half-close).
        up.add_done_callback(lambda t: _closed(t) and down.cancel())
        down.add_done_callback(lambda t: _closed(t) and up.cancel())
    if _closed(up) or _closed(down):
        return False
    try:
        await client.send_text(END_FRAME)
        await agent.send_text(END_FRAME)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a side that vanished right after its end
        log.debug("channel.relay_end_failed", error=type(exc).__name__)
        await close_websocket(client, CLOSE_NORMAL)
        await close_websocket(agent, CLOSE_NORMAL)
        return False
    return True


def _closed(task: asyncio.Task[bool]) -> bool:
    return task.cancelled() or task.exception() is not None or not task.result()


async def _pump(
    src: WebSocket, dst: WebSocket, name: str, ends: tuple[bool, bool], eofs: set[str]
) -> bool:
    """Copy ``src`` to ``dst``: True at ``src``'s ``end`` (when it may say it, ``ends[0]``),
    else False after closing ``dst`` the way ``src`` closed. Cancelled, it closes nothing.

    An ``end`` when ``dst`` cannot say one (``ends[1]`` false) closes both with 1000: the
    clean end of a stream without reuse."""
    src_ends, dst_ends = ends
    try:
        while True:
            message = await src.receive()
            if message["type"] == "websocket.disconnect":
                code, reason = forwardable(message.get("code"), message.get("reason"), name)
                break
            data = message.get("bytes")
            if data is not None:
                await dst.send({"type": "websocket.send", "bytes": data})
                continue
            text = message.get("text") or ""
            if src_ends and text == END_FRAME:
                if len(eofs) == 2 and dst_ends:
                    return True
                if len(eofs) == 2:
                    await close_websocket(src, CLOSE_NORMAL)
                    code, reason = CLOSE_NORMAL, ""
                    break
                # Not after both eof: the stream has not ended, the websocket is not quiet.
                code, reason = CLOSE_BAD_REQUEST, f"{name} sent end before the stream ended"
                await close_websocket(src, code, reason)
                break
            if text == EOF_FRAME:
                eofs.add(name)
            await dst.send({"type": "websocket.send", "text": text})
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken transport, on either side
        log.debug("channel.relay_broken", side=name, error=type(exc).__name__)
        code, reason = CLOSE_INTERNAL, f"{name} connection lost"
    await close_websocket(dst, code, reason)
    return False
