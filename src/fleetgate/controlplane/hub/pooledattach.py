"""A channel on one of the agent's pooled websockets: the ``channel.open`` sent on it, and
the check of the agent's answer (``channel.accepted``, a refusal, or for a ``quiet`` open
the channel's own first frame), for :class:`~fleetgate.controlplane.hub.channels.ChannelBroker`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import structlog
from pydantic import ValidationError
from starlette.websockets import WebSocket

from fleetgate.controlplane.errors import ChannelFailed
from fleetgate.controlplane.hub.channelpool import PooledSocket
from fleetgate.controlplane.wsprotocol import send_with
from fleetgate.shared.jsontext import loads as json_loads
from fleetgate.shared.protocol import ChannelAccepted, ChannelOpen, ErrorMessage
from fleetgate.shared.protocol.channels import CLOSE_AGENT_TIMEOUT, CLOSE_INTERNAL, CLOSE_REFUSED


__all__ = ["attach_pooled"]

log = structlog.get_logger("fleetgate.controlplane.channels")


@asynccontextmanager
async def attach_pooled(
    pooled: PooledSocket,
    message: ChannelOpen,
    attach_timeout: float,
    *,
    early: bool,
    first: Callable[[], bytes | None] | None = None,
) -> AsyncIterator[WebSocket]:
    """The channel ``message`` on a pooled agent websocket: send the open, read the
    agent's answer (``channel.accepted`` or its refusal), then hand the websocket over;
    ``early``: hand it over at once, the answer's check left in ``pooled.acceptance``
    (and the open ``quiet`` when the agent takes that: its first frame is the answer),
    and the client's first bytes (``first()``: taken if received already) sent with the
    open, in the same write."""
    assert pooled.claimed
    websocket, channel_id = pooled.websocket, message.channel_id
    # This claim's own: once kept (``ChannelPool.keep``) the websocket may be claimed
    # again, with a new event, before this channel is done.
    released = pooled.released
    quiet = early and pooled.quiet
    if quiet:
        message = message.model_copy(update={"quiet": True})
    try:
        try:
            text = message.model_dump_json()
            if not (early and first is not None and send_with(websocket, text, first)):
                await websocket.send_text(text)
        except (OSError, RuntimeError) as exc:  # the websocket closed under us
            raise _pool_lost(type(exc).__name__) from None
        if quiet:
            pooled.acceptance = partial(_quiet_answer, websocket, channel_id)
        elif early:
            pooled.acceptance = partial(_pooled_answer, websocket, channel_id, attach_timeout)
        else:
            await _pooled_answer(websocket, channel_id, attach_timeout)
        yield websocket
    finally:
        released.set()


async def _pooled_answer(websocket: WebSocket, channel_id: uuid.UUID, within: float) -> None:
    """Return once the agent accepted the channel on ``websocket``; raise its refusal, its
    silence for ``within`` seconds or the loss of the websocket (:class:`ChannelFailed`)."""
    try:
        async with asyncio.timeout(within):
            answer = await _next_frame(websocket)
    except TimeoutError:
        raise ChannelFailed(
            "agent_timeout",
            f"the agent did not answer within {within:g} s",
            CLOSE_AGENT_TIMEOUT,
        ) from None
    _check_pooled_answer(answer, channel_id)


async def _quiet_answer(websocket: WebSocket, channel_id: uuid.UUID) -> dict[str, Any]:
    """The agent's first frame on ``websocket`` after a quiet open, for the relay: the
    channel's own (or its close), which says the agent accepted it; its refusal is raised.

    No time limit: an accepted channel may be silent (a target that waits for its client,
    whose frames are relayed meanwhile); a refusal comes at once, from the agent's checks
    of the open."""
    answer = await _next_frame(websocket)
    refusal = _refusal_in(answer, channel_id)
    if refusal is not None:
        raise refusal
    return answer


async def _next_frame(websocket: WebSocket) -> dict[str, Any]:
    """The next ASGI message of ``websocket``; a broken one reads as closed (1006)."""
    try:
        return dict(await websocket.receive())
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - a transport that broke may fail any way
        return {"type": "websocket.disconnect", "code": 1006}


def _refusal_in(answer: dict[str, Any], channel_id: uuid.UUID) -> ChannelFailed | None:
    """The agent's refusal of ``channel_id`` if the frame ``answer`` is one."""
    text = answer.get("text")
    if not isinstance(text, str):
        return None  # data, or the close: the channel's own
    try:
        return _refusal_of(json_loads(text), channel_id)
    except ValueError:
        return None


def _refusal_of(decoded: object, channel_id: uuid.UUID) -> ChannelFailed | None:
    """The refusal of ``channel_id`` if ``decoded`` is one: an ``error`` whose ``ref`` is
    the channel id (a tunnel's own ``error`` frames name none)."""
    if not isinstance(decoded, dict) or decoded.get("type") != "error":
        return None
    try:
        error = ErrorMessage.model_validate(decoded)
    except ValidationError:
        return None
    if error.ref != str(channel_id):
        return None
    return ChannelFailed(error.code, error.message, CLOSE_REFUSED)


def _check_pooled_answer(answer: dict[str, Any], channel_id: uuid.UUID) -> None:
    """Return if the agent accepted the channel; raise its refusal (or a broken answer)."""
    text = answer.get("text")
    if answer.get("type") == "websocket.disconnect" or not isinstance(text, str):
        raise _pool_lost("closed")
    try:
        decoded = json_loads(text)
        refusal = _refusal_of(decoded, channel_id)
        if refusal is not None:
            raise refusal
        if ChannelAccepted.model_validate(decoded).channel_id == channel_id:
            return
    except (ValueError, ValidationError):
        pass
    raise _pool_lost("an answer that is not the channel's")


def _pool_lost(why: str) -> ChannelFailed:
    log.info("channel.pool_lost", why=why)
    return ChannelFailed(
        "agent_connection_lost", "the agent's channel websocket closed", CLOSE_INTERNAL
    )
