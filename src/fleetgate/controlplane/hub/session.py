"""One agent's backhaul connection, from ``hello`` to close.

Two tasks per connection, both owned by the session's TaskGroup:

* the reader receives frames into a bounded buffer (:class:`FrameBuffer`);
* the processor takes every frame already buffered (up to ``confirm_batch``), answers
  pings and refused frames at once, stores the batch's reports (through the hub's shared
  :class:`ReportWriter`, in one transaction with other sessions' reports) and confirms
  them with one ``confirm``. Under load the batches grow, so the cost per report falls;
  when the link is quiet every report is confirmed immediately.

Connections silent for ``agent_idle_timeout`` are closed by the hub's one sweeper
(``Hub.watch_idle``), not by a timer per connection.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from starlette.websockets import WebSocket

from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.controlplane.hub.channels import ChannelBroker
from fleetgate.controlplane.hub.framebuf import FrameBuffer
from fleetgate.controlplane.hub.ingest import ReportWriter, WriterClosed
from fleetgate.controlplane.hub.registry import (
    CLOSE_REPLACED,
    CLOSE_SHUTDOWN,
    AgentConnection,
    Registry,
)
from fleetgate.controlplane.hub.resumption import send_missed
from fleetgate.controlplane.hub.undeliverable import fail_refused
from fleetgate.controlplane.hub.wakeups import CommandWakeups
from fleetgate.controlplane.store import (
    Database,
    hello as hello_store,
    reports as reports_store,
    servers as servers_store,
)
from fleetgate.controlplane.timeutil import now_us
from fleetgate.shared.errors import ProtocolViolation
from fleetgate.shared.protocol import (
    PROTOCOL_VERSION,
    CommandAcked,
    CommandDelivered,
    CommandFinished,
    CommandOutput,
    CommandReport,
    Confirm,
    ErrorMessage,
    Hello,
    Ping,
    Pong,
    SshEvent,
    SudoDecided,
    Welcome,
    decode_agent_message,
    error_ref,
)


__all__ = ["AgentSession"]

log = structlog.get_logger("fleetgate.controlplane.hub")

QUEUE_FRAMES = 1024
"""Frames received but not yet processed; the reader waits when it is full."""

_FRAME_REFUSALS = frozenset({"too_large", "malformed", "invalid", "unknown_type"})
"""Codes of an agent's ``error`` that mean it could not even read the frame: a command
frame refused so will be refused again, so the command fails now."""

_REPORT_TYPES = (
    CommandDelivered,
    CommandAcked,
    CommandOutput,
    CommandFinished,
    SudoDecided,
    SshEvent,
)


_STREAMED = (CommandOutput, CommandFinished)
"""Reports that change what a command's output stream shows."""


def _uuid_or_none(text: str | None) -> str | None:
    try:
        return None if text is None else str(uuid.UUID(text))
    except ValueError:
        return None


def _error(code: str, message: str, ref: str | None) -> ErrorMessage:
    return ErrorMessage(
        code=code[:64], message=message[:4096], ref=None if ref is None else ref[:128]
    )


class AgentSession:
    """Drive one accepted connection until it closes (see the module docstring)."""

    def __init__(
        self,
        conn: AgentConnection,
        *,
        db: Database,
        registry: Registry,
        wakeups: CommandWakeups,
        settings: ControlPlaneSettings,
        channels: ChannelBroker | None = None,
        writer: ReportWriter | None = None,
        on_link: Callable[[AgentConnection], Awaitable[None]] | None = None,
    ) -> None:
        self.conn = conn
        self.on_link = on_link
        """Called once the link is this server's (replicas announce it to the others)."""
        self.writer = writer
        self.channels = channels
        self.db = db
        self.registry = registry
        self.wakeups = wakeups
        self.settings = settings
        self.welcomed = False
        self.log = log.bind(server_id=conn.server_id)
        self._queue = FrameBuffer(QUEUE_FRAMES)

    @property
    def websocket(self) -> WebSocket:
        """The underlying websocket."""
        return self.conn.websocket

    async def run(self) -> None:
        """Serve the connection; return when it is closed by either side."""
        self.log.info("agent.connected")
        close_code, reason = CLOSE_SHUTDOWN, "control plane shutting down"  # if cancelled
        try:
            async with asyncio.TaskGroup() as tg:
                # Idle connections are closed by the hub's one sweeper (Hub.watch_idle),
                # not by a task per connection.
                tasks = [tg.create_task(self._read()), tg.create_task(self._process())]
                await self.conn.closed.wait()
                for task in tasks:
                    task.cancel()
        except* Exception as group:
            close_code, reason = 1011, "internal error"
            for exc in group.exceptions:
                self.log.error("agent.session_failed", exc_info=exc)
        finally:
            await self._finish(close_code, reason)

    async def _finish(self, close_code: int, reason: str) -> None:
        await self.conn.close(close_code, reason)  # a no-op when already closed
        self.registry.remove(self.conn)
        try:
            await asyncio.shield(
                self.db.write(
                    servers_store.mark_disconnected,
                    self.conn.server_id,
                    connected_at=self.conn.connected_at,
                    last_seen_at=self.conn.last_seen_at,
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - best effort at the end of a session
            self.log.warning("agent.mark_disconnected_failed", error=type(exc).__name__)
        self.log.info("agent.disconnected")

    # -- reader ----------------------------------------------------------------------

    async def _read(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                self.conn.closed.set()
                return
            text = message.get("text")
            frame: str | bytes = text if text is not None else message.get("bytes") or b""
            self.conn.last_seen_at = now_us()
            self.conn.last_frame_monotonic = time.monotonic()
            await self._queue.put(frame)

    # -- processor -------------------------------------------------------------------

    async def _process(self) -> None:
        limit = self.settings.confirm_batch
        while True:
            frames = await self._queue.take(limit)
            reports: list[CommandReport] = []
            for frame in frames:
                report = await self._handle_frame(frame)
                if report is not None:
                    reports.append(report)
            if reports:
                await self._store(reports)

    async def _handle_frame(self, frame: str | bytes) -> CommandReport | None:
        """Answer one frame; return it when it is a report to store."""
        try:
            message = decode_agent_message(frame, max_bytes=self.settings.max_message_bytes)
        except ProtocolViolation as exc:
            self.log.info("backhaul.frame_refused", code=exc.code)
            await self.conn.send_quietly(_error(exc.code, exc.message, error_ref(frame)))
            return None
        if isinstance(message, Ping):
            await self.conn.send_quietly(Pong(nonce=message.nonce))
            return None
        if isinstance(message, Hello):
            await self._hello(message)
            return None
        if isinstance(message, _REPORT_TYPES):
            if not self.welcomed:
                await self.conn.send_quietly(
                    _error("invalid", "hello must be the first message", str(message.rid))
                )
                return None
            return message
        if isinstance(message, ErrorMessage):
            await self._agent_error(message)
        return None

    async def _agent_error(self, message: ErrorMessage) -> None:
        """An ``error`` from the agent: a refused channel, a refused command frame (which
        then reaches a final state instead of waiting for ever), or just logged."""
        if self.channels is not None and (
            self.channels.refused(self.conn.server_id, message)
            or await self.channels.refused_elsewhere(self.conn.server_id, message)
        ):
            self.log.info("channel.refused", code=message.code, channel_id=message.ref)
            return
        ref = _uuid_or_none(message.ref)
        if ref is not None and message.code in _FRAME_REFUSALS:
            failed = await fail_refused(
                self.db,
                self.conn.server_id,
                ref,
                message.code,
                message.message,
                self.wakeups.notify,
            )
            if failed:
                return
        self.log.warning("agent.error", code=message.code, ref=message.ref)

    async def _hello(self, hello: Hello) -> None:
        if self.welcomed:
            await self.conn.send_quietly(_error("invalid", "duplicate hello", None))
            return
        if hello.protocol != PROTOCOL_VERSION:
            await self.conn.send_quietly(
                _error(
                    "unsupported_version",
                    f"protocol {hello.protocol} is not supported (expected {PROTOCOL_VERSION})",
                    None,
                )
            )
            await self.conn.close(1002, "unsupported protocol version")
            return
        conn = self.conn
        conn.agent_version = hello.agent_version
        conn.hostname = hello.hostname
        conn.max_message_bytes = hello.max_message_bytes or self.settings.max_message_bytes
        conn.features = frozenset(hello.features)
        conn.tunnel_grants = hello.tunnel_grants
        await self.db.write(
            hello_store.record_hello,
            conn.server_id,
            agent_version=hello.agent_version,
            hostname=hello.hostname,
            connected_at=conn.connected_at,
            last_seen_at=conn.last_seen_at,
            labels=hello.labels,
            ssh_host_key=hello.ssh_host_key,
        )
        welcome = Welcome(server_id=uuid.UUID(conn.server_id), server_name=conn.server_name)
        if not await conn.send_quietly(welcome):
            return
        self.welcomed = True
        old = self.registry.add(conn)
        if old is not None:
            self.log.info("agent.connection_replaced")
            await old.close(CLOSE_REPLACED, "replaced by a newer connection")
        if self.on_link is not None:
            await self.on_link(conn)
        self.log.info("agent.hello", agent_version=hello.agent_version, running=len(hello.running))
        await send_missed(conn, self.db, [str(c) for c in hello.running], self.wakeups.notify)

    async def _store(self, reports: list[CommandReport]) -> None:
        if self.writer is not None:  # shared with every other session: one transaction
            try:
                outcome = await self.writer.store(
                    self.conn.server_id, reports, last_seen_at=self.conn.last_seen_at
                )
            except WriterClosed:  # shutting down: the agent sends them again later
                await self.conn.close(CLOSE_SHUTDOWN, "control plane shutting down")
                return
        else:
            # A final result erases its command's env; the WAL is scrubbed at once.
            outcome = await self.db.write_erasing(
                reports_store.apply_reports,
                self.conn.server_id,
                reports,
                last_seen_at=self.conn.last_seen_at,
            )
        for rid, command_id in outcome.unknown:
            self.log.warning("report.unknown_command", command_id=command_id, rid=rid)
            await self.conn.send_quietly(
                _error("invalid", f"unknown command {command_id}", str(rid))
            )
        # Streams show output and the final result only: a delivery or start report
        # would wake them for a database read that finds nothing new.
        streamed = {str(r.command_id) for r in reports if isinstance(r, _STREAMED)}
        if outcome.changed & streamed:
            self.wakeups.notify(outcome.changed & streamed)
        rids = outcome.stored + [rid for rid, _ in outcome.unknown]
        await self.conn.send_quietly(Confirm(rids=rids))
