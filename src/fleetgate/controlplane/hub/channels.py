"""The channel broker: it asks an agent to open a channel and pairs its websocket up.

A route that serves a client's channel websocket calls :meth:`ChannelBroker.attach`: the
broker sends ``channel.open`` on the server's backhaul and waits until the agent dials
``/ws/agent/channels/<id>/`` (:meth:`ChannelBroker.serve_agent`), refuses over the
backhaul (an ``error`` whose ``ref`` is the channel id), or the timeout passes; or it
claims one of the agent's pooled websockets (``channelpool``, ``pooledattach``). The
agent's websocket is handed to the route for the relay; the agent endpoint's own task
waits until the route is done with it.

The registry of every open channel and who opened it (:class:`ChannelRegistry`, ended by
a :class:`Revocation`) is ``channelregistry``'s, named here as well.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from starlette.websockets import WebSocket

from fleetgate.controlplane.errors import ChannelFailed
from fleetgate.controlplane.hub.channelpool import ChannelPool
from fleetgate.controlplane.hub.channelregistry import ChannelRegistry
from fleetgate.controlplane.hub.pooledattach import attach_pooled
from fleetgate.controlplane.hub.registry import Registry
from fleetgate.controlplane.hub.relay import close_websocket
from fleetgate.shared.protocol import ChannelClose, ChannelOpen, ErrorMessage, TerminalEnd, encode
from fleetgate.shared.protocol.channels import (
    CLOSE_AGENT_TIMEOUT,
    CLOSE_NOT_CONNECTED,
    CLOSE_REFUSED,
    CLOSE_UNKNOWN,
)


__all__ = ["ChannelBroker", "ChannelCluster"]

log = structlog.get_logger("fleetgate.controlplane.channels")

MAX_PENDING = 4096
"""Channels asked for and not yet attached by their agent; beyond this, refused."""


@dataclass
class _Pending:
    server_id: str
    attached: asyncio.Future[WebSocket]
    released: asyncio.Event = field(default_factory=asyncio.Event)


async def _quietly(work: Awaitable[None]) -> None:
    """Bookkeeping at the end of a channel: a failure is logged, never raised."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the cluster database may be unreachable
        log.warning("channel.cluster_bookkeeping_failed", error=type(exc).__name__)


class ChannelCluster(Protocol):
    """What the broker needs from the replicas' cluster (``controlplane.cluster``)."""

    async def channel_waiting(self, channel_id: str) -> None:
        """A client waits here for the agent's side of ``channel_id``."""
        ...

    async def channel_done(self, channel_id: str) -> None:
        """The channel was attached here, or abandoned."""
        ...

    async def answer_channel(self, channel_id: str, server_id: str, error: str) -> bool:
        """Pass the agent's ``error`` on to the replica waiting for the channel."""
        ...

    async def relay_agent(self, websocket: WebSocket, server_id: str, channel_id: str) -> bool:
        """Relay the agent's websocket to the replica waiting for it; False: none does."""
        ...


class ChannelBroker:
    """Channels between clients and agents, one per hub."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._pending: dict[uuid.UUID, _Pending] = {}
        self.open = ChannelRegistry()
        """The channels relayed now, by owner (revocation ends them)."""
        self.pool = ChannelPool()
        """Agent websockets dialled ahead of need (``channelpool``)."""
        self.cluster: ChannelCluster | None = None
        """Set on a replica: the agent's side may arrive at, or be refused on, another."""

    @asynccontextmanager
    async def attach(
        self,
        server_id: str,
        message: ChannelOpen,
        *,
        attach_timeout: float = 10.0,
        early: bool = False,
    ) -> AsyncIterator[WebSocket]:
        """The agent's accepted websocket of a new channel, for the duration of the block:
        one of the server's pooled websockets when it has one (``channelpool``), else one
        the agent dials after ``channel.open`` on the backhaul.

        ``early`` (a pipelined tunnel stream): a pooled websocket is handed over as soon
        as the ``channel.open`` is sent on it, so the client's first bytes follow the open
        without waiting a round trip to the agent, which reads them only once it accepted
        (a refusal closes the websocket unread). The caller must then await
        :meth:`ChannelPool.acceptance` before it reads anything from the agent.

        Raises:
            ChannelFailed: the server is not connected, the agent refused (4403 with its
                code) or did not attach within ``attach_timeout`` seconds (4408), or its
                pooled websocket closed before it answered (1011).
        """
        pooled = self.attach_pooled(server_id, message, attach_timeout, early=early)
        if pooled is not None:
            async with pooled as agent:
                yield agent
            return
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
        cluster = self.cluster
        try:
            if cluster is not None:
                # Behind a balancer the agent's dial may reach any replica: say where
                # the client waits before the agent is asked.
                await cluster.channel_waiting(str(channel_id))
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
            if cluster is not None:
                await _quietly(cluster.channel_done(str(channel_id)))

    def attach_pooled(
        self,
        server_id: str,
        message: ChannelOpen,
        attach_timeout: float = 10.0,
        *,
        early: bool,
        first: Callable[[], bytes | None] | None = None,
    ) -> AbstractAsyncContextManager[WebSocket] | None:
        """:meth:`attach` on one of the server's idle pooled websockets, claimed now
        (``None``: none idle, or the server is not connected). Entering it does not wait
        on anything when ``early``: a route may do it in its own task, before any other;
        ``first`` then gives the client's first bytes if they are there already, sent
        with the open."""
        if self._registry.get(server_id) is None:
            return None
        pooled = self.pool.claim(server_id)
        if pooled is None:
            return None
        return attach_pooled(pooled, message, attach_timeout, early=early, first=first)

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

    def waiting(self, channel_id: str) -> bool:
        """Whether a client waits here for the agent's side of ``channel_id``."""
        try:
            return uuid.UUID(channel_id) in self._pending
        except ValueError:
            return False

    async def refused_elsewhere(self, server_id: str, error: ErrorMessage) -> bool:
        """The agent refused a channel whose client waits on another replica: pass the
        refusal on; whether it was about such a channel."""
        if self.cluster is None or error.ref is None:
            return False
        try:
            channel_id = str(uuid.UUID(error.ref))
        except ValueError:
            return False
        return await self.cluster.answer_channel(channel_id, server_id, encode(error))

    async def close(self, server_id: str, channel_id: uuid.UUID, reason: str) -> bool:
        """Ask the agent to end a channel now; whether the request was sent."""
        conn = self._registry.get(server_id)
        if conn is None:
            return False
        return await conn.send_quietly(ChannelClose(channel_id=channel_id, reason=reason[:1024]))

    async def end_terminal(self, server_id: str, terminal_id: str, reason: str) -> bool:
        """Ask the agent to end a terminal now, attached or detached; whether it was sent."""
        conn = self._registry.get(server_id)
        if conn is None:
            return False
        message = TerminalEnd(terminal_id=uuid.UUID(terminal_id), reason=reason[:1024])
        return await conn.send_quietly(message)

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
        if (
            pending is None
            and key is not None
            and self.cluster is not None
            and await self.cluster.relay_agent(websocket, server_id, str(key))
        ):
            return
        if pending is None or pending.server_id != server_id or pending.attached.done():
            log.info("channel.unknown", server_id=server_id, channel_id=channel_id)
            await websocket.accept()
            await close_websocket(websocket, CLOSE_UNKNOWN, "no such channel")
            return
        await websocket.accept()
        pending.attached.set_result(websocket)
        await pending.released.wait()
