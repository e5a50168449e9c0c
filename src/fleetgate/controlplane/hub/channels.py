"""The channel broker: asks an agent to open a channel and pairs its websocket up.

A route that serves a client's channel websocket calls :meth:`ChannelBroker.attach`: the
broker sends ``channel.open`` on the server's backhaul and waits until the agent dials
``/ws/agent/channels/<id>/`` (:meth:`ChannelBroker.serve_agent`), refuses over the
backhaul (an ``error`` whose ``ref`` is the channel id), or the timeout passes. The agent's
websocket is handed to the route for the relay; the agent endpoint's own task waits
until the route is done with it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import structlog
from starlette.websockets import WebSocket

from fleetgate.controlplane.errors import ChannelFailed
from fleetgate.controlplane.hub.registry import Registry
from fleetgate.controlplane.hub.relay import close_websocket
from fleetgate.shared.protocol import ChannelClose, ChannelOpen, ErrorMessage
from fleetgate.shared.protocol.channels import (
    CLOSE_AGENT_TIMEOUT,
    CLOSE_NOT_CONNECTED,
    CLOSE_REFUSED,
    CLOSE_UNKNOWN,
)


__all__ = ["ChannelBroker"]

log = structlog.get_logger("fleetgate.controlplane.channels")

MAX_PENDING = 4096
"""Channels asked for and not yet attached by their agent; beyond this, refused."""


@dataclass
class _Pending:
    server_id: str
    attached: asyncio.Future[WebSocket]
    released: asyncio.Event = field(default_factory=asyncio.Event)


class ChannelBroker:
    """Channels between clients and agents, one per hub."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._pending: dict[uuid.UUID, _Pending] = {}

    @asynccontextmanager
    async def attach(
        self, server_id: str, message: ChannelOpen, *, attach_timeout: float = 10.0
    ) -> AsyncIterator[WebSocket]:
        """The agent's accepted websocket of a new channel, for the duration of the block.

        Raises:
            ChannelFailed: the server is not connected, the agent refused (4403 with its
                code) or did not attach within ``attach_timeout`` seconds (4408).
        """
        channel_id = message.channel_id
        conn = self._registry.get(server_id)
        if conn is None:
            raise ChannelFailed(
                "server_not_connected", "the server is not connected", CLOSE_NOT_CONNECTED
            )
        if len(self._pending) >= MAX_PENDING or channel_id in self._pending:
            raise ChannelFailed("busy", "too many channels are opening", CLOSE_REFUSED)
        pending = _Pending(server_id, asyncio.get_running_loop().create_future())
        self._pending[channel_id] = pending
        try:
            if not await conn.send_quietly(message):
                raise ChannelFailed(
                    "server_not_connected", "the server is not connected", CLOSE_NOT_CONNECTED
                )
            try:
                async with asyncio.timeout(attach_timeout):
                    agent = await asyncio.shield(pending.attached)
            except TimeoutError:
                raise ChannelFailed(
                    "agent_timeout",
                    f"the agent did not open the channel within {attach_timeout:g} s",
                    CLOSE_AGENT_TIMEOUT,
                ) from None
            yield agent
        finally:
            self._pending.pop(channel_id, None)
            if not pending.attached.done():
                pending.attached.cancel()
            pending.released.set()

    def refused(self, server_id: str, error: ErrorMessage) -> bool:
        """The agent refused a channel; whether ``error`` was about one of ours."""
        try:
            channel_id = uuid.UUID(error.ref or "")
        except ValueError:
            return False
        pending = self._pending.get(channel_id)
        if pending is None or pending.server_id != server_id or pending.attached.done():
            return False
        pending.attached.set_exception(ChannelFailed(error.code, error.message, CLOSE_REFUSED))
        # Retrieved by attach(); mark it so an abandoned future does not warn.
        pending.attached.exception()
        return True

    async def close(self, server_id: str, channel_id: uuid.UUID, reason: str) -> bool:
        """Ask the agent to end a channel now; whether the request was sent."""
        conn = self._registry.get(server_id)
        if conn is None:
            return False
        return await conn.send_quietly(ChannelClose(channel_id=channel_id, reason=reason[:1024]))

    async def serve_agent(self, websocket: WebSocket, server_id: str, channel_id: str) -> None:
        """The agent's side of a channel (already authenticated as ``server_id``).

        Accepts the websocket, hands it to the waiting route and returns only when the
        route is done with it (returning closes an ASGI websocket).
        """
        try:
            key = uuid.UUID(channel_id)
        except ValueError:
            key = None
        pending = None if key is None else self._pending.get(key)
        if pending is None or pending.server_id != server_id or pending.attached.done():
            log.info("channel_unknown", server_id=server_id, channel_id=channel_id)
            await websocket.accept()
            await close_websocket(websocket, CLOSE_UNKNOWN, "no such channel")
            return
        await websocket.accept()
        pending.attached.set_result(websocket)
        await pending.released.wait()
