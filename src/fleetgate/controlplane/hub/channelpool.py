"""Pooled agent channel websockets: dialled ahead of need, each used for one channel at a time.

Opening a channel the classic way costs the agent a new TCP connection, an HTTP upgrade
and an authentication after it received ``channel.open`` on the backhaul: most of a
tunnel stream's set-up time. While channels are in use, an agent keeps a few idle
websockets open at ``/ws/agent/pool/`` (authenticated as its server, like any agent
websocket). :meth:`ChannelPool.claim` takes one of the server's; the broker sends the
``channel.open`` on it and the agent answers on it: ``channel.accepted`` (the websocket is
the channel's from then on) or an ``error`` (refused; the websocket is closed).

A pooled websocket carries no authority: the route authorized the channel before asking
for it, and the agent checks the grant of the ``channel.open`` exactly as one from the
backhaul. It serves one channel, or (dialled with ``?reuse=1``, accepted with
``REUSE_HEADER``) one tunnel stream after another: a stream the agent ended with ``end``
(``hub.streamrelay``) gives it back (:meth:`ChannelPool.keep`) and it is idle
again at once, while the client's side of the stream may still be ending (nothing of
the stream goes to the agent after its ``end``): the next stream, which may start
before that, finds it idle. Dialled with ``?quiet=1``, its agent takes a ``quiet`` open (``ChannelOpen.quiet``:
a pipelined stream's), which it does not answer with ``channel.accepted``. Bounds:
:data:`PER_SERVER` idle websockets per server (one more is refused, one given back is
closed), each closed after :data:`IDLE_TIMEOUT` seconds unused (the agent dials again
only while it is still serving channels).

Once claimed, a websocket is read by its channel alone (the answer too): the agent's
first frame reaches the relay without passing through the pool's task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from starlette.websockets import WebSocket

from fleetgate.controlplane.hub.relay import close_websocket
from fleetgate.shared.protocol.channels import CLOSE_NORMAL
from fleetgate.shared.protocol.tunnel import REUSE_HEADER


__all__ = ["IDLE_TIMEOUT", "PER_SERVER", "ChannelPool", "PooledSocket"]

log = structlog.get_logger("fleetgate.controlplane.channels")

PER_SERVER = 8
"""Idle pooled websockets kept per server; the agent's own pool is smaller."""
IDLE_TIMEOUT = 30.0
"""Seconds an unused pooled websocket stays open."""
CLOSE_POOL_FULL = 4429


@dataclass(eq=False)
class PooledSocket:
    """One pooled agent websocket: idle, or claimed by one channel until ``released``.

    While idle, the pool reads it (``reading``) to see it close or speak unasked; a claim
    stops that read, and from then on the channel alone reads it (no task between the
    agent's frames and the channel's relay)."""

    websocket: WebSocket
    server_id: str
    reuse: bool = False
    """The agent ends tunnel streams on it with ``end`` frames (it asked, we accepted)."""
    quiet: bool = False
    """The agent takes a ``quiet`` open (it asked with ``?quiet=1``)."""
    claimed: bool = False
    """A channel took this websocket."""
    reading: asyncio.Future[Any] | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)
    kept: bool = False
    """The agent ended its stream cleanly with ``end``: idle again once released."""
    acceptance: Callable[[], Awaitable[dict[str, Any] | None]] | None = None
    """Set while the agent's answer to a ``channel.open`` sent ahead of it (a pipelined
    tunnel stream) is still to be checked: the relay awaits it before the agent's frames.
    It returns the agent's first frame of the channel when that was the answer (a
    ``quiet`` open's), to be relayed first; ``None`` after a ``channel.accepted``."""


class ChannelPool:
    """The idle pooled websockets of every connected agent, newest last."""

    def __init__(self, per_server: int = PER_SERVER, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.per_server = per_server
        self.idle_timeout = idle_timeout
        self._idle: dict[str, list[PooledSocket]] = {}
        self._claimed: dict[int, PooledSocket] = {}
        """Claimed websockets by ``id()`` (a starlette WebSocket is not hashable)."""
        self.claimed = 0
        """Channels asked for on a pooled websocket so far."""
        self.reused = 0
        """Channels that gave their pooled websocket back for another."""

    def idle(self, server_id: str) -> int:
        """Idle pooled websockets of ``server_id`` now."""
        return len(self._idle.get(server_id, ()))

    def claim(self, server_id: str) -> PooledSocket | None:
        """Take an idle websocket of ``server_id`` for one channel (``None``: none idle);
        the channel reads it from now on.

        Synchronous: a claimed websocket is out of the pool before anyone else looks.
        """
        sockets = self._idle.get(server_id)
        while sockets:
            pooled = sockets.pop()  # the newest: the least likely to be closing
            reading = pooled.reading
            if reading is not None and reading.done():
                continue  # it closed or spoke unasked: its serve() closes it
            if not sockets:
                del self._idle[server_id]
            if reading is not None:
                # Safe: a frame that comes now stays queued for the channel's read.
                reading.cancel()
            pooled.claimed = True
            self._claimed[id(pooled.websocket)] = pooled
            self.claimed += 1
            return pooled
        self._idle.pop(server_id, None)
        return None

    def reusable(self, websocket: WebSocket) -> bool:
        """Whether ``websocket`` is a claimed pooled one whose agent says ``end``."""
        pooled = self._claimed.get(id(websocket))
        return pooled is not None and pooled.reuse

    def acceptance(
        self, websocket: WebSocket
    ) -> Callable[[], Awaitable[dict[str, Any] | None]] | None:
        """The check of the agent's answer still due on the claimed ``websocket`` (its
        ``channel.open`` went without waiting for it), or ``None``."""
        pooled = self._claimed.get(id(websocket))
        return None if pooled is None else pooled.acceptance

    def keep(self, websocket: WebSocket) -> None:
        """The agent ended the stream on ``websocket`` with ``end``: it is idle again now
        (its channel is done with it, whatever the client's side still does) instead of
        closed when released."""
        pooled = self._claimed.get(id(websocket))
        if pooled is not None and pooled.reuse:
            pooled.kept = True
            pooled.released.set()

    async def serve(self, websocket: WebSocket, server_id: str) -> None:
        """The endpoint of one pooled websocket (already authenticated as ``server_id``).

        Returns when the websocket closes unused, expires, or its channel is done with it
        (returning closes an ASGI websocket).
        """
        params = websocket.query_params
        reuse = params.get("reuse") == "1"
        await websocket.accept(headers=[(REUSE_HEADER.encode(), b"1")] if reuse else None)
        pooled = PooledSocket(websocket, server_id, reuse=reuse, quiet=params.get("quiet") == "1")
        while True:
            if self.idle(server_id) >= self.per_server:
                log.debug("channel.pool_full", server_id=server_id)
                await close_websocket(websocket, CLOSE_POOL_FULL, "pool full")
                return
            self._idle.setdefault(server_id, []).append(pooled)
            try:
                if not await self._until_claimed(pooled):
                    return
                await pooled.released.wait()
            finally:
                self._forget(pooled)
                self._claimed.pop(id(websocket), None)
                reading = pooled.reading
                if reading is not None and not reading.done():
                    reading.cancel()
                    await asyncio.gather(reading, return_exceptions=True)
            if not pooled.kept:
                return
            # Given back by a stream the agent ended with ``end``: idle again.
            self.reused += 1
            pooled.claimed, pooled.kept, pooled.acceptance = False, False, None
            pooled.released = asyncio.Event()

    async def _until_claimed(self, pooled: PooledSocket) -> bool:
        """Read the idle websocket until a channel claims it (True) or it is of no use
        any more (False, closed): it expired, the agent closed it, or it spoke first (a
        broken agent)."""
        reading = asyncio.ensure_future(pooled.websocket.receive())
        pooled.reading = reading
        await asyncio.wait({reading}, timeout=self.idle_timeout)
        if pooled.claimed:
            return True  # claim() stopped the read
        self._forget(pooled)
        await close_websocket(pooled.websocket, CLOSE_NORMAL, "idle")
        return False

    def _forget(self, pooled: PooledSocket) -> None:
        sockets = self._idle.get(pooled.server_id)
        if sockets is not None and pooled in sockets:
            sockets.remove(pooled)
            if not sockets:
                del self._idle[pooled.server_id]
