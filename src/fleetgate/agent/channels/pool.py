"""Channel websockets dialled ahead of need, so a new channel skips the dial.

Opening a channel the classic way (``channel.open`` on the backhaul, then dialling
``/ws/agent/channels/<id>/``) costs a TCP connection, an HTTP upgrade and an
authentication: most of a tunnel stream's set-up time. While this agent serves channels
(one was opened in the last :data:`WARM` seconds), :class:`ChannelPool` keeps :data:`SIZE`
websockets open at ``/ws/agent/pool/``. The control plane sends a ``channel.open`` on one
of them; the router checks it exactly as one from the backhaul (grant, limits, the kind's
own policy) and either takes the websocket for that channel (it answers
``channel.accepted``, unless the open is ``quiet``: then the channel's own first frame
says it) or answers the refusal and closes it. A pooled websocket carries
nothing before that, serves one channel at a time, and is replaced when that channel ends
(or :data:`REFILL_AFTER` seconds later if it is still open), unless the channel was a
tunnel stream that this agent ended with an ``end`` frame (``fleetgate.shared.pump``): the
control plane and this agent then both keep the websocket for the next channel.

A channel whose ``channel.open`` comes on the backhaul while the pool is warm and every
pooled websocket it has is serving a channel (more channels overlap than the pool holds:
tunnel streams still ending when the next ones start) makes the pool hold one more from
then on (up to :data:`MAX_SIZE`), so the next such overlap finds one idle.

An idle fleet keeps no pooled websocket: the control plane closes one unused for its
idle timeout, and the agent dials again only while it is warm.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog
from pydantic import ValidationError

from fleetgate.agent.backhaul import ChannelLink, dial_path
from fleetgate.agent.config import AgentConfig
from fleetgate.agent.errors import ChannelClosed, ConnectionLost
from fleetgate.shared.backoff import backoff_delays
from fleetgate.shared.protocol import ChannelOpen, ErrorMessage
from fleetgate.shared.protocol.channels import CLOSE_BAD_REQUEST, CLOSE_NORMAL
from fleetgate.shared.protocol.limits import DEFAULT_MAX_MESSAGE_BYTES
from fleetgate.shared.protocol.tunnel import REUSE_HEADER


__all__ = ["MAX_SIZE", "POOL_PATH", "REFILL_AFTER", "SIZE", "WARM", "ChannelPool"]

log = structlog.get_logger(__name__)

POOL_PATH = "/ws/agent/pool/?reuse=1&quiet=1"
"""``reuse``: tunnel streams one after another; ``quiet``: the control plane may mark a
``channel.open`` ``quiet`` (no ``channel.accepted`` then, ``router``)."""
SIZE = 2
"""Idle pooled websockets kept while warm (sequential streams need one; two absorb the
redial of the one just taken), at first."""
MAX_SIZE = 6
"""At most this many, however many channels overlap (the control plane keeps 8)."""
WARM = 30.0
"""Seconds after the last channel opened during which the pool is kept full."""
REFILL_AFTER = 1.0
"""Seconds after a pooled websocket was taken by a channel still open that its
replacement is dialled (at once when the channel ends earlier)."""
RETRY_MIN, RETRY_MAX = 0.5, 60.0
"""Delays before dialling again after a pooled websocket failed or closed unused."""

PathDialer = Callable[[AgentConfig, str, str, uuid.UUID], Awaitable[ChannelLink]]
Accept = Callable[[ChannelOpen, ChannelLink], ErrorMessage | Coroutine[Any, Any, None]]
"""The router's check of an open received on a pooled link: the refusal, or the channel's
serving on the link (run by the pool's task; the router's ``channel.close`` cancels it)."""


class ChannelPool:
    """Keeps up to ``size`` idle channel websockets while channels are in use."""

    def __init__(
        self,
        config: AgentConfig,
        key: str,
        accept: Accept,
        *,
        size: int = SIZE,
        warm: float = WARM,
        dial: PathDialer = dial_path,
    ) -> None:
        self._config = config
        self._key = key
        self._accept = accept
        self.size = size
        self.warm_seconds = warm
        self._dial = dial
        self._last_use: float | None = None
        self._wake = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self.idle = 0
        """Pooled websockets open and waiting now."""
        self.links = 0
        """Pooled websockets open now, idle or serving a channel."""

    def used(self, *, pooled: bool = True) -> None:
        """A channel was opened: keep (or start keeping) the pool full. Not ``pooled`` (it
        came on the backhaul) while every pooled websocket was busy: hold one more."""
        if not pooled and self.warm() and self.idle == 0 and self.links >= self.size:
            self._grow()
        self._last_use = time.monotonic()
        self._wake.set()

    def _grow(self) -> None:
        group = self._group
        if group is None or self.size >= MAX_SIZE:
            return
        try:
            group.create_task(self._slot(group, grown=True), name=f"channel-pool-{self.size}")
        except RuntimeError:
            return  # the pool is stopping
        self.size += 1

    def warm(self) -> bool:
        """Whether a channel opened recently enough to keep pooled websockets."""
        last = self._last_use
        return last is not None and time.monotonic() - last < self.warm_seconds

    async def run(self) -> None:
        """Keep the pool until cancelled (the router owns this task)."""
        if self.size <= 0:
            return
        async with asyncio.TaskGroup() as tg:
            for slot in range(self.size):
                tg.create_task(self._slot(tg), name=f"channel-pool-{slot}")
            self._group = tg

    async def _slot(self, tg: asyncio.TaskGroup, *, grown: bool = False) -> None:
        """Dial a pooled websocket, and another each time the last one is no longer
        free (closed, or its channel still open after :data:`REFILL_AFTER` seconds);
        ``grown``: a slot added by :meth:`_grow` (said once its first one is open)."""
        delays = backoff_delays(RETRY_MIN, RETRY_MAX)
        while True:
            while not self.warm():
                self._wake.clear()
                await self._wake.wait()
            try:
                link = await self._dial(self._config, self._key, POOL_PATH, uuid.uuid4())
            except ConnectionLost as exc:
                log.debug("channel.pool_dial_failed", reason=str(exc))
                await asyncio.sleep(next(delays))
                continue
            link.reuse = link.header(REUSE_HEADER) == "1"
            if grown:
                grown = False
                log.info("channel.pool_grown", size=self.size)
            free = asyncio.Event()
            kept = tg.create_task(self._keep(link, free), name="channel-pool-link")
            await free.wait()
            if kept.done() and not kept.result():
                await asyncio.sleep(next(delays))  # closed unused: do not spin
            else:
                delays = backoff_delays(RETRY_MIN, RETRY_MAX)

    async def _keep(self, link: ChannelLink, free: asyncio.Event) -> bool:
        """Serve channels on ``link`` one after another while it ends each with an ``end``
        frame (``link.kept``); whether a ``channel.open`` came at all.

        ``free`` is set when the slot should dial another: at once when the link is done,
        or :data:`REFILL_AFTER` seconds into a channel still open (a dial at once would
        compete with the channel's own set-up on both event loops; the other pooled
        websocket serves meanwhile). A link given back after that serves on as one more.
        """
        served = False
        loop = asyncio.get_running_loop()
        self.links += 1
        try:
            while True:
                came, serving = await self._next_channel(link)
                served = served or came
                if serving is None:
                    return served
                # The channel runs in this task: it starts without a loop turn.
                refill = loop.call_later(REFILL_AFTER, free.set)
                try:
                    await serving
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is None or task.uncancel() > 0:
                        raise  # the pool itself stops (as well)
                    return served  # the channel was closed (its link with it)
                finally:
                    refill.cancel()
                if not link.kept:
                    return served
                link.kept = False
        finally:
            self.links -= 1
            free.set()

    async def _next_channel(
        self, link: ChannelLink
    ) -> tuple[bool, Coroutine[Any, Any, None] | None]:
        """Wait on ``link`` for a ``channel.open``: whether one came, and the channel's
        serving (``None``: refused or not one, the link is closed)."""
        self.idle += 1
        try:
            frame = await link.recv()
        except ChannelClosed:
            return False, None  # unused: expired, refused as one too many, or the end of the CP
        except BaseException:
            link.abort()
            raise
        finally:
            self.idle -= 1
        message = _channel_open(frame)
        if message is None:
            log.warning("channel.pool_bad_frame")
            await _close(link, CLOSE_BAD_REQUEST, "expected channel.open")
            return False, None
        link.channel_id = message.channel_id
        refusal = self._accept(message, link)
        if not isinstance(refusal, ErrorMessage):
            return True, refusal
        try:
            await link.send(refusal.model_dump_json())
        except ChannelClosed:
            pass
        await _close(link, CLOSE_NORMAL, "refused")
        return True, None


def _channel_open(frame: str | bytes) -> ChannelOpen | None:
    """The ``channel.open`` of a pooled link's first frame, or ``None`` (anything else).

    Parsed with the model alone (a fifth of the backhaul codec's time for this message);
    the size bound is the backhaul's."""
    if not isinstance(frame, str) or len(frame) > DEFAULT_MAX_MESSAGE_BYTES:
        return None
    try:
        return ChannelOpen.model_validate_json(frame)
    except ValidationError:
        return None


async def _close(link: ChannelLink, code: int, reason: str) -> None:
    try:
        async with asyncio.timeout(5):
            await link.close(code, reason)
    except (TimeoutError, OSError):
        link.abort()
