"""The backhaul: one websocket from the agent to the control plane, kept alive forever.

Per connection three tasks share a TaskGroup: the reader (decodes frames and hands them
to the handler), the writer (drains the outbox) and the keepalive (application pings; a
missing pong declares the peer dead). When any of them fails, the others are cancelled,
the connection is closed and the reconnect loop dials again after a jittered delay.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import structlog
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from fleetgate import __version__
from fleetgate.agent.backhaul.dialing import describe, describe_all, dial
from fleetgate.agent.backhaul.handlers import ChannelHandler, CommandHandler
from fleetgate.agent.backhaul.outbox import Outbox
from fleetgate.agent.backhaul.retry import classify
from fleetgate.agent.backhaul.urls import ring_for
from fleetgate.agent.clock import monotonic, utcnow
from fleetgate.agent.config import AgentConfig
from fleetgate.agent.errors import ConnectionLost
from fleetgate.shared.backoff import Backoff
from fleetgate.shared.errors import ProtocolViolation
from fleetgate.shared.protocol import (
    ChannelClose,
    ChannelOpen,
    CommandRun,
    Confirm,
    ErrorMessage,
    Hello,
    Ping,
    Pong,
    ServerMessage,
    TerminalEnd,
    Welcome,
    WorkSessionEnded,
    decode_server_message,
    encode,
    error_ref,
)


__all__ = ["Backhaul", "LinkState"]

log = structlog.get_logger(__name__)


@dataclass
class LinkState:
    """What ``fleetgate-agent status`` shows about the backhaul."""

    status: Literal["connecting", "connected", "waiting"] = "connecting"
    connected_since: datetime | None = None
    last_error: str | None = None
    connects: int = 0
    rtt: float | None = field(default=None)


class Backhaul:
    """Dials the control plane, reconnects with backoff, and moves messages both ways."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        key: str,
        outbox: Outbox,
        handler: CommandHandler,
        channels: ChannelHandler | None = None,
        on_connected: Callable[[], None] | None = None,
        on_state: Callable[[LinkState], None] | None = None,
        ssh_host_key: str | None = None,
    ) -> None:
        self._config = config
        self._ssh_host_key = ssh_host_key
        self._key = key
        self._outbox = outbox
        self._handler = handler
        self._channels = channels
        self._on_connected = on_connected
        self._on_state = on_state
        self._nonces = itertools.count(1)
        self._pongs: dict[int, asyncio.Future[None]] = {}
        self.state = LinkState()
        self.server_name: str | None = None
        self._up_since: float | None = None
        self._ring = ring_for(config.control_plane)

    async def run(self) -> None:
        """Keep a connection up until cancelled.

        Raises:
            AuthRejected: the control plane refused our credentials; retrying is useless.
        """
        bh = self._config.backhaul
        backoff = Backoff(bh.reconnect_min_delay, bh.reconnect_max_delay, bh.stable_after)
        while True:
            self._up_since = None
            self._set_status("connecting")
            try:
                await self._session()
            except ConnectionLost as exc:
                self.state.last_error = str(exc)
                log.warning("backhaul.disconnected", reason=str(exc))
            except Exception as exc:
                if classify(exc) == "fatal":
                    raise
                self.state.last_error = repr(exc)
                log.exception("backhaul.error")
            self.state.connected_since = None
            self._set_status("waiting")
            uptime = 0.0 if self._up_since is None else monotonic() - self._up_since
            delay = backoff.next_delay(uptime)
            # Several replicas: the next attempt goes to the next one (this one may be
            # dead); with one URL this is a no-op.
            url = self._ring.rotate()
            log.info(
                "backhaul.reconnect_in",
                seconds=round(delay, 3),
                uptime=round(uptime, 3),
                **({"url": url} if len(self._ring) > 1 else {}),
            )
            await asyncio.sleep(delay)

    def _set_status(self, status: Literal["connecting", "connected", "waiting"]) -> None:
        self.state.status = status
        if self._on_state is not None:
            self._on_state(self.state)

    async def _session(self) -> None:
        ws = await dial(self._config, self._key, self._ring.current)
        close_code, reason = 1000, ""
        try:
            await self._handshake(ws)
            self._up_since = monotonic()
            self.state.connected_since = utcnow()
            self.state.connects += 1
            self._set_status("connected")
            log.info("backhaul.connected", server=self.server_name, url=self._ring.current)
            if self._on_connected is not None:
                self._on_connected()
            await self._outbox.rewind()
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._reader(ws))
                    tg.create_task(self._writer(ws))
                    tg.create_task(self._keepalive(ws))
            except* (ConnectionClosed, OSError, TimeoutError, ConnectionLost) as group:
                # Reader, writer and keepalive can fail together (a reset breaks all
                # three): the reason names every distinct failure, not only the first.
                lost = _PeerDead if group.subgroup(_PeerDead) else ConnectionLost
                raise lost(describe_all(group)) from group
        except asyncio.CancelledError:
            # Cancelled means the agent stops: say so, the control plane logs it.
            close_code, reason = 1001, "agent shutting down"
            raise
        except _PeerDead:
            # A peer that does not answer pings will not answer a close either: drop
            # the TCP connection instead of waiting out the closing handshake.
            ws.transport.abort()
            raise
        finally:
            for waiter in self._pongs.values():
                waiter.cancel()
            self._pongs.clear()
            await ws.close(close_code, reason)

    async def _handshake(self, ws: ClientConnection) -> None:
        hello = Hello(
            agent_version=__version__,
            hostname=socket.gethostname(),
            running=self._handler.running(),
            max_message_bytes=self._config.limits.max_message_bytes,
            features=["tunnel"] if self._config.tunnel.enabled else [],
            labels=dict(self._config.labels),
            tunnel_grants=True,
            ssh_host_key=self._ssh_host_key,
        )
        await ws.send(encode(hello))
        try:
            async with asyncio.timeout(self._config.backhaul.open_timeout):
                frame = await ws.recv()
        except TimeoutError as exc:
            raise ConnectionLost("no welcome from the control plane") from exc
        except ConnectionClosed as exc:
            raise ConnectionLost(f"closed during handshake: {describe(exc)}") from exc
        try:
            welcome = self._decode(frame)
        except ProtocolViolation as exc:
            raise ConnectionLost(f"bad welcome: {exc}") from exc
        if not isinstance(welcome, Welcome):
            raise ConnectionLost(f"expected welcome, got {welcome.type}")
        self.server_name = welcome.server_name

    async def _reader(self, ws: ClientConnection) -> None:
        async for frame in ws:
            try:
                message = self._decode(frame)
            except ProtocolViolation as exc:
                log.warning("backhaul.bad_frame", code=exc.code, reason=exc.message)
                reply = ErrorMessage(code=exc.code, message=exc.message, ref=error_ref(frame))
                await ws.send(encode(reply))
                continue
            await self._handle(ws, message)
        raise ConnectionLost("the control plane closed the connection")

    async def _handle(self, ws: ClientConnection, message: ServerMessage) -> None:
        match message:
            case Confirm(rids=rids):
                await self._outbox.confirm(rids)
            case CommandRun():
                refusal = self._handler.on_command(message, utcnow())
                if refusal is not None:
                    await ws.send(encode(refusal))
            case WorkSessionEnded():
                self._handler.on_work_session_ended(message)
            case ChannelOpen():
                refused = self._open_channel(message)
                if refused is not None:
                    await ws.send(encode(refused))
            case ChannelClose():
                if self._channels is not None:
                    self._channels.on_close(message)
            case TerminalEnd():
                if self._channels is not None:
                    self._channels.on_terminal_end(message)
            case Ping(nonce=nonce):
                await ws.send(encode(Pong(nonce=nonce)))
            case Pong(nonce=nonce):
                waiter = self._pongs.pop(nonce, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            case ErrorMessage(code=code, message=text, ref=ref):
                log.warning("backhaul.peer_error", code=code, reason=text, ref=ref)
            case Welcome():
                log.warning("backhaul.unexpected_welcome")

    def _open_channel(self, message: ChannelOpen) -> ErrorMessage | None:
        if self._channels is None:
            return ErrorMessage(
                code="unsupported",
                message="this agent serves no channels",
                ref=str(message.channel_id),
            )
        return self._channels.on_open(message)

    async def _writer(self, ws: ClientConnection) -> None:
        while True:
            for report in await self._outbox.next_batch():
                await ws.send(encode(report))

    async def _keepalive(self, ws: ClientConnection) -> None:
        bh = self._config.backhaul
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(bh.keepalive_interval)
            nonce = next(self._nonces)
            waiter: asyncio.Future[None] = loop.create_future()
            self._pongs[nonce] = waiter
            sent = monotonic()
            await ws.send(encode(Ping(nonce=nonce)))
            try:
                async with asyncio.timeout(bh.keepalive_timeout):
                    await waiter
            except TimeoutError:
                raise _PeerDead(f"no pong within {bh.keepalive_timeout:g} s") from None
            finally:
                self._pongs.pop(nonce, None)
            self.state.rtt = monotonic() - sent

    def _decode(self, frame: str | bytes) -> ServerMessage:
        return decode_server_message(frame, max_bytes=self._config.limits.max_message_bytes)


class _PeerDead(ConnectionLost):
    """The keepalive found the control plane silent."""
