"""The channel broker, and the registry of every open channel and who opened it.

The broker asks an agent to open a channel and pairs its websocket up.

A route that serves a client's channel websocket calls :meth:`ChannelBroker.attach`: the
broker sends ``channel.open`` on the server's backhaul and waits until the agent dials
``/ws/agent/channels/<id>/`` (:meth:`ChannelBroker.serve_agent`), refuses over the
backhaul (an ``error`` whose ``ref`` is the channel id), or the timeout passes. The agent's
websocket is handed to the route for the relay; the agent endpoint's own task waits
until the route is done with it.

:class:`ChannelRegistry` records every relayed channel (terminal, transfer, tunnel
stream, and any later kind: a route registers its channel before relaying it) with its
:class:`ChannelOwner`: the token and user that opened it and its work session. One call,
:meth:`ChannelRegistry.end`, ends every channel a :class:`Revocation` matches: a deleted
token, a disabled user, an ended work session. The registry also remembers recent
revocations, so a channel whose gate passed just before its token was deleted is refused
when it registers instead of outliving the revocation. The registry is pure: no I/O.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import structlog
from pydantic import ValidationError
from starlette.websockets import WebSocket

from fleetgate.controlplane.errors import ChannelFailed
from fleetgate.controlplane.hub.channelpool import ChannelPool, PooledSocket
from fleetgate.controlplane.hub.registry import Registry
from fleetgate.controlplane.hub.relay import close_websocket
from fleetgate.controlplane.wsprotocol import send_with
from fleetgate.shared.jsontext import loads as json_loads
from fleetgate.shared.protocol import (
    ChannelAccepted,
    ChannelClose,
    ChannelOpen,
    ErrorMessage,
    TerminalEnd,
    encode,
)
from fleetgate.shared.protocol.channels import (
    CLOSE_AGENT_TIMEOUT,
    CLOSE_INTERNAL,
    CLOSE_NOT_CONNECTED,
    CLOSE_REFUSED,
    CLOSE_UNKNOWN,
)


__all__ = [
    "ChannelBroker",
    "ChannelCluster",
    "ChannelOwner",
    "ChannelRegistry",
    "OpenChannel",
    "Revocation",
]

log = structlog.get_logger("fleetgate.controlplane.channels")

MAX_PENDING = 4096
"""Channels asked for and not yet attached by their agent; beyond this, refused."""
MAX_OPEN = 65_536
"""Channels relayed at once by this control plane; beyond this, refused."""
MAX_REMEMBERED = 4096
"""Recent revocations a new channel is checked against (older ones are in the database:
their tokens no longer authenticate, their sessions no longer pass the gate)."""


@dataclass(frozen=True, slots=True)
class ChannelOwner:
    """Who opened a channel: the token, its user (``None``: a service), the work session."""

    token_id: str
    user_id: int | None
    work_session_id: str | None


@dataclass(frozen=True, slots=True)
class Revocation:
    """What was revoked (any field given matches) and the code and detail a client sees.

    ``code`` is one of :data:`fleetgate.shared.protocol.channels.REVOCATION_CODES`.
    """

    code: str
    detail: str
    token_id: str | None = None
    user_id: int | None = None
    work_session_id: str | None = None

    def matches(self, owner: ChannelOwner) -> bool:
        """Whether a channel (or terminal, tunnel) of ``owner`` falls under this revocation."""
        return (
            (self.token_id is not None and owner.token_id == self.token_id)
            or (self.user_id is not None and owner.user_id == self.user_id)
            or (self.work_session_id is not None and owner.work_session_id == self.work_session_id)
        )


@dataclass(eq=False)
class OpenChannel:
    """One relayed channel. ``ended`` is set when it must stop; ``why`` says why."""

    channel_id: uuid.UUID
    kind: str
    server_id: str
    owner: ChannelOwner
    resource_id: str | None = None
    """What the channel belongs to: the terminal or the tunnel (``None``: a transfer)."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    why: tuple[str, str] | None = None
    on_end: Callable[[], None] | None = None
    """Called (once) when the channel is ended, while its route relays it."""

    def end(self, code: str, detail: str) -> bool:
        """Ask the channel's route to stop (the first reason wins); False if it was asked."""
        if self.ended.is_set():
            return False
        self.why = (code, detail)
        self.ended.set()
        if self.on_end is not None:
            self.on_end()
        return True


class ChannelRegistry:
    """Every channel this control plane relays now, indexed by id and by resource."""

    def __init__(self, max_open: int = MAX_OPEN) -> None:
        self._max_open = max_open
        self._open: dict[uuid.UUID, OpenChannel] = {}
        self._by_resource: dict[str, set[uuid.UUID]] = {}
        # Keyed by what was revoked (("token", id), ("user", id), ("session", id)), oldest
        # first, at most MAX_REMEMBERED: a lookup is three dict reads, not a scan.
        self._revoked: OrderedDict[tuple[str, str], Revocation] = OrderedDict()

    def register(self, channel: OpenChannel) -> None:
        """Record a channel before it is relayed.

        Raises:
            ChannelFailed: the channel's owner was just revoked (4403 with the revocation's
                code), or too many channels are open.
        """
        revoked = self.revoked(channel.owner)
        if revoked is not None:
            raise ChannelFailed(revoked.code, revoked.detail, CLOSE_REFUSED)
        if len(self._open) >= self._max_open or channel.channel_id in self._open:
            raise ChannelFailed("busy", "too many open channels", CLOSE_REFUSED)
        self._open[channel.channel_id] = channel
        if channel.resource_id is not None:
            self._by_resource.setdefault(channel.resource_id, set()).add(channel.channel_id)

    def unregister(self, channel: OpenChannel) -> None:
        """Forget a channel that ended."""
        if self._open.pop(channel.channel_id, None) is None:
            return
        if channel.resource_id is not None:
            ids = self._by_resource.get(channel.resource_id)
            if ids is not None:
                ids.discard(channel.channel_id)
                if not ids:
                    del self._by_resource[channel.resource_id]

    def reinstate_user(self, user_id: int) -> None:
        """A disabled user was enabled again: forget their ``user_disabled`` revocation."""
        self._revoked.pop(("user", str(user_id)), None)

    def revoked(self, owner: ChannelOwner) -> Revocation | None:
        """The remembered revocation that covers ``owner``, if any."""
        for key in _keys(owner.token_id, owner.user_id, owner.work_session_id):
            found = self._revoked.get(key)
            if found is not None:
                return found
        return None

    def _remember(self, revocation: Revocation) -> None:
        r = revocation
        for key in _keys(r.token_id, r.user_id, r.work_session_id):
            self._revoked[key] = revocation
            self._revoked.move_to_end(key)
        while len(self._revoked) > MAX_REMEMBERED:
            self._revoked.popitem(last=False)

    def count(self, resource_id: str) -> int:
        """Channels open now for ``resource_id`` (a tunnel's streams)."""
        return len(self._by_resource.get(resource_id, ()))

    def matching(self, predicate: Callable[[OpenChannel], bool]) -> list[OpenChannel]:
        """The open channels ``predicate`` selects."""
        return [c for c in self._open.values() if predicate(c)]

    def end(
        self, predicate: Callable[[OpenChannel], bool], code: str, detail: str
    ) -> list[OpenChannel]:
        """Ask every open channel ``predicate`` selects to stop with ``code``; returns them."""
        chosen = self.matching(predicate)
        for channel in chosen:
            channel.end(code, detail)
        return chosen

    def revoke(self, revocation: Revocation) -> list[OpenChannel]:
        """End every channel ``revocation`` covers and refuse new ones of its owner."""
        self._remember(revocation)
        return self.end(lambda c: revocation.matches(c.owner), revocation.code, revocation.detail)

    def end_resource(self, resource_id: str, code: str, detail: str) -> list[OpenChannel]:
        """End the channels of one terminal or tunnel."""
        ids = self._by_resource.get(resource_id, set())
        return self.end(lambda c: c.channel_id in ids, code, detail)


@dataclass
class _Pending:
    server_id: str
    attached: asyncio.Future[WebSocket]
    released: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def _attach_pooled(
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


async def _quietly(work: Awaitable[None]) -> None:
    """Bookkeeping at the end of a channel: a failure is logged, never raised."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the cluster database may be unreachable
        log.warning("channel.cluster_bookkeeping_failed", error=type(exc).__name__)


def _keys(
    token_id: str | None, user_id: int | None, work_session_id: str | None
) -> list[tuple[str, str]]:
    keys = []
    if token_id is not None:
        keys.append(("token", token_id))
    if user_id is not None:
        keys.append(("user", str(user_id)))
    if work_session_id is not None:
        keys.append(("session", work_session_id))
    return keys


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
        return _attach_pooled(pooled, message, attach_timeout, early=early, first=first)

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
