"""The channel router: from ``channel.open`` to a served channel, and its teardown.

:meth:`ChannelRouter.on_open` runs on the backhaul reader and never blocks: it verifies
the grant with the kind's scope, applies the limits and the kind's own ``check``, and
queues the channel. :meth:`ChannelRouter.run` owns one task per channel: it dials the
channel's websocket, awaits the kind's ``serve`` and closes the link however that ends.
A channel opened on a pooled websocket (:meth:`ChannelRouter.on_pooled`, checked the same
way) is served the same way by the pool's own task. A refusal found later (inside ``serve``) closes the link with 4403 and a JSON reason the
control plane hands to the client unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from time import time
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

import structlog

from fleetgate.agent.audit import AuditLog
from fleetgate.agent.backhaul import ChannelLink, dial_channel
from fleetgate.agent.channels.pool import SIZE as POOL_SIZE, ChannelPool
from fleetgate.agent.config import AgentConfig
from fleetgate.agent.errors import ChannelClosed, ChannelRefused, ConnectionLost
from fleetgate.agent.policy import GrantPolicy, GrantRefused
from fleetgate.shared.heap import keep_large_buffers
from fleetgate.shared.protocol import (
    ChannelAccepted,
    ChannelClose,
    ChannelOpen,
    ErrorMessage,
    GrantClaims,
    TerminalEnd,
    content_digest,
)
from fleetgate.shared.protocol.channels import (
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_REFUSED,
    grant_subjects,
    refusal_reason,
)


__all__ = ["ChannelRouter", "ChannelService", "EndsResources"]

log = structlog.get_logger(__name__)

Dialer = Callable[[AgentConfig, str, UUID], Awaitable[ChannelLink]]
_Intake = tuple[ChannelOpen, "ChannelService", GrantClaims | None]


class ChannelService(Protocol):
    """One kind of channel (websh, files, tunnel), as the router sees it."""

    kind: str
    """The ``spec.kind`` this service serves."""

    @property
    def scope(self) -> str | tuple[str, ...]:
        """The work-session scope its grants must carry (a tuple: any one of them)."""
        ...

    def check(self, message: ChannelOpen) -> None:
        """Refuse early (no I/O, no blocking) by raising :class:`ChannelRefused`."""
        ...

    async def serve(
        self, message: ChannelOpen, link: ChannelLink, claims: GrantClaims | None
    ) -> None:
        """Serve the channel until it ends; the router closes ``link`` afterwards.

        ``claims`` are the verified grant's (``None`` only when unsigned operations are
        allowed). Raise :class:`ChannelRefused` to end with a refusal the client sees.
        """
        ...


@runtime_checkable
class EndsResources(Protocol):
    """A kind whose resources outlive their channels (a websh terminal): the control
    plane can end one by id even while no channel is attached (``terminal.end``)."""

    def end(self, resource_id: UUID, reason: str) -> bool:
        """End the resource now; False when this kind has no such resource."""
        ...


class ChannelRouter:
    """Accepts channel requests from the backhaul and owns the channels it serves."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        key: str,
        grants: GrantPolicy,
        audit: AuditLog | None = None,
        dial: Dialer = dial_channel,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self._config = config
        self._key = key
        self._grants = grants
        self._audit = audit
        self._dial = dial
        self._services: dict[str, ChannelService] = {}
        self._enders: list[EndsResources] = []
        self._max = config.limits.max_channels
        self._intake: asyncio.Queue[_Intake] = asyncio.Queue(maxsize=self._max)
        self._open: dict[UUID, asyncio.Task[None] | None] = {}
        self._accepting = True
        self._group: asyncio.TaskGroup | None = None
        """:meth:`run`'s task group while it runs: a channel accepted then starts at once."""
        self.pool = ChannelPool(config, key, self.on_pooled, size=pool_size)
        """Channel websockets dialled ahead of need (``pool``)."""

    def register(self, service: ChannelService) -> None:
        """Serve channels of ``service.kind`` with ``service``."""
        if service.kind in self._services:
            raise ValueError(f"a service for {service.kind!r} channels is already registered")
        self._services[service.kind] = service
        if isinstance(service, EndsResources):
            self._enders.append(service)

    def open_channels(self) -> int:
        """How many channels are accepted and not yet ended."""
        return len(self._open)

    # -- called by the backhaul reader ------------------------------------------------

    def on_open(self, message: ChannelOpen) -> ErrorMessage | None:
        """Accept a channel without blocking, or say why not."""
        taken = self._check(message)
        if isinstance(taken, ErrorMessage):
            return taken
        service, claims = taken
        self._open[message.channel_id] = None
        if self._group is None or not self._start(self._group, message, service, claims):
            self._intake.put_nowait((message, service, claims))
        self.pool.used(pooled=False)
        return None

    def on_pooled(
        self, message: ChannelOpen, link: ChannelLink
    ) -> ErrorMessage | Coroutine[Any, Any, None]:
        """Accept a channel whose ``channel.open`` came on a pooled websocket (checked
        exactly as :meth:`on_open`), or say why not: its serving on ``link``, which the
        pool's task runs itself. No task of its own: the channel starts without a loop
        turn, and :meth:`on_close` cancels the pool's task (which goes on unless it was
        cancelled for another reason as well)."""
        taken = self._check(message)
        if isinstance(taken, ErrorMessage):
            return taken
        service, claims = taken
        self._open[message.channel_id] = asyncio.current_task()
        self.pool.used()
        return self._serve(message, service, claims, link)

    def _check(
        self, message: ChannelOpen
    ) -> ErrorMessage | tuple[ChannelService, GrantClaims | None]:
        """The service and the verified claims of a channel, or the refusal (recorded)."""
        channel_id = message.channel_id
        kind = message.spec.kind
        try:
            service = self._admit(message)
            claims = self._grants.check(
                message.grant,
                command_id=grant_subjects(message),
                scope=service.scope,
                now=time(),
                content=content_digest(message.spec),
            )
            service.check(message)
        except (ChannelRefused, GrantRefused) as exc:
            code = exc.code
            detail = exc.message if isinstance(exc, ChannelRefused) else exc.detail
            log.warning("channel.refused", channel_id=str(channel_id), kind=kind, code=code)
            self._record("channel.refused", message, code=code, reason=detail)
            return ErrorMessage(code=code, message=detail, ref=str(channel_id))
        return service, claims

    def _admit(self, message: ChannelOpen) -> ChannelService:
        if not self._accepting:
            raise ChannelRefused("shutting_down", "the agent is stopping")
        service = self._services.get(message.spec.kind)
        if service is None:
            raise ChannelRefused(
                "unsupported", f"this agent does not serve {message.spec.kind} channels"
            )
        if message.channel_id in self._open:
            raise ChannelRefused("duplicate", "this channel is already open")
        if len(self._open) >= self._max:
            raise ChannelRefused("busy", f"too many open channels (limit {self._max})")
        return service

    def on_close(self, message: ChannelClose) -> None:
        """End a channel now: its task is cancelled, which closes its link."""
        task = self._open.get(message.channel_id)
        if task is not None:
            log.info("channel.close_requested", channel_id=str(message.channel_id))
            task.cancel(message.reason or "closed by the control plane")

    def on_terminal_end(self, message: TerminalEnd) -> None:
        """End a terminal now, attached or detached (its token, user or session was
        revoked); the kind that owns it does, an unknown one is ignored."""
        reason = message.reason or "closed"
        ended = any(ender.end(message.terminal_id, reason) for ender in self._enders)
        log.info("channel.terminal_end", terminal_id=str(message.terminal_id), found=ended)
        if ended and self._audit is not None:
            self._audit.record(
                "terminal.ended", terminal_id=str(message.terminal_id), reason=reason[:200]
            )

    def stop_accepting(self) -> None:
        """Refuse new channels from now on (graceful shutdown)."""
        self._accepting = False

    # -- the owner of all channel tasks -----------------------------------------------

    async def run(self) -> None:
        """Serve channels until cancelled; cancelling it ends every channel."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.pool.run(), name="channel-pool")
            # From now on an accepted channel's task is created where it is accepted (a
            # loop turn sooner than through the queue); the queue holds those before.
            self._group = tg
            try:
                while True:
                    self._start(tg, *await self._intake.get())
            finally:
                self._group = None

    def _start(
        self,
        tg: asyncio.TaskGroup,
        message: ChannelOpen,
        service: ChannelService,
        claims: GrantClaims | None,
    ) -> bool:
        """Start serving an accepted channel in ``tg``; False if ``tg`` is shutting down."""
        channel_id = message.channel_id
        if channel_id not in self._open:
            return True  # closed before it started
        serving = self._serve(message, service, claims, None)
        try:
            task = tg.create_task(serving, name=f"channel-{channel_id}")
        except RuntimeError:
            serving.close()
            return False
        self._open[channel_id] = task
        return True

    async def _serve(
        self,
        message: ChannelOpen,
        service: ChannelService,
        claims: GrantClaims | None,
        pooled: ChannelLink | None,
    ) -> None:
        channel_id = message.channel_id
        with structlog.contextvars.bound_contextvars(
            channel_id=str(channel_id), kind=message.spec.kind
        ):
            try:
                await self._dial_and_serve(message, service, claims, pooled)
            finally:
                self._open.pop(channel_id, None)

    async def _dial_and_serve(
        self,
        message: ChannelOpen,
        service: ChannelService,
        claims: GrantClaims | None,
        pooled: ChannelLink | None,
    ) -> None:
        keep_large_buffers()
        if pooled is None:
            try:
                link = await self._dial(self._config, self._key, message.channel_id)
            except ConnectionLost as exc:
                log.warning("channel.dial_failed", reason=str(exc))
                return
        else:
            link = pooled
            # A quiet open (a pipelined tunnel stream) is not answered: the channel's own
            # first frame, or its close, tells the control plane it was accepted, and the
            # stream's set-up costs a frame less each way (and a send before the connect).
            if not message.quiet:
                try:
                    accepted = ChannelAccepted(channel_id=message.channel_id)
                    await link.send(accepted.model_dump_json())
                except ChannelClosed as exc:
                    log.warning("channel.pool_lost", code=exc.code)
                    link.abort()
                    return
        opened = self._record_soon(
            "channel.opened", message, work_session=claims and claims.work_session
        )
        code, reason = CLOSE_NORMAL, ""
        window = asyncio.timeout_at(_deadline(claims))
        try:
            async with window:
                await service.serve(message, link, claims)
        except asyncio.CancelledError:
            code, reason = CLOSE_NORMAL, "closed"
            raise
        except ChannelClosed as exc:
            log.info("channel.peer_closed", code=exc.code, reason=exc.reason)
        except ChannelRefused as exc:
            log.warning("channel.refused", code=exc.code, reason=exc.message)
            opened()
            self._record("channel.refused", message, code=exc.code, reason=exc.message)
            code, reason = CLOSE_REFUSED, refusal_reason(exc.code, exc.message)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and window.expired():
                # The agent's own clock ends the channel with its grant, whatever the
                # control plane does (or if it cannot be reached).
                log.info("channel.grant_expired")
                code = CLOSE_REFUSED
                reason = refusal_reason("work_session_expired", "the work session has expired")
            else:
                # One broken channel must not take the others (or the agent) down.
                log.exception("channel.failed")
                code, reason = CLOSE_INTERNAL, "internal error"
        finally:
            if not link.kept:  # else open and quiet: its pool serves the next channel on it
                await _close_quietly(link, code, reason)
            opened()
            self._record("channel.closed", message, code=code)

    def _record_soon(
        self, event: str, message: ChannelOpen, **fields: object
    ) -> Callable[[], None]:
        """Record ``event`` at the next loop turn, once the channel's task waits (a tunnel
        stream's target is connected and its first bytes sent by then: the audit write is
        not on its set-up path); the returned call records it now if it is still due, so
        that it always precedes the channel's later events."""
        due = True

        def record() -> None:
            nonlocal due
            if due:
                due = False
                self._record(event, message, **fields)

        asyncio.get_running_loop().call_soon(record)
        return record

    def _record(self, event: str, message: ChannelOpen, **fields: object) -> None:
        if self._audit is not None:
            spec = message.spec
            self._audit.record(
                event,
                channel_id=str(message.channel_id),
                kind=spec.kind,
                user=getattr(spec, "username", None),
                **fields,
            )


def _deadline(claims: GrantClaims | None) -> float | None:
    """The event-loop time at which the grant of a channel runs out (``None``: never)."""
    if claims is None or claims.expires_at is None:
        return None
    return asyncio.get_running_loop().time() + max(0.0, claims.expires_at - time())


async def _close_quietly(link: ChannelLink, code: int, reason: str) -> None:
    try:
        async with asyncio.timeout(5):
            await link.close(code, reason)
    except (TimeoutError, OSError):
        link.abort()
