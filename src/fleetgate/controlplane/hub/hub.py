"""The agent hub: the backhaul endpoint, the registry of agents, and delivery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import structlog
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from fleetgate.controlplane.auth import parse_agent_authorization
from fleetgate.controlplane.cluster.hoptoken import HOP_HEADER, verify_hop
from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.controlplane.hub.channels import ChannelBroker
from fleetgate.controlplane.hub.ingest import ReportWriter
from fleetgate.controlplane.hub.registry import (
    CLOSE_DELETED,
    CLOSE_IDLE,
    CLOSE_SHUTDOWN,
    AgentConnection,
    Registry,
)
from fleetgate.controlplane.hub.scheduler import Scheduler
from fleetgate.controlplane.hub.session import AgentSession
from fleetgate.controlplane.hub.undeliverable import deliver
from fleetgate.controlplane.hub.wakeups import CommandWakeups
from fleetgate.controlplane.store import Database, servers as servers_store
from fleetgate.controlplane.store.command_rows import CommandRow
from fleetgate.controlplane.store.worksessions import WorkSessionRow
from fleetgate.shared.protocol import WorkSessionEnded


if TYPE_CHECKING:
    from fleetgate.controlplane.cluster.bridge import HubBridge
    from fleetgate.controlplane.cluster.node import ClusterNode


__all__ = ["Hub"]

log = structlog.get_logger("fleetgate.controlplane.hub")


class Hub:
    """Everything about connected agents; one per application."""

    def __init__(
        self, db: Database, settings: ControlPlaneSettings, cluster: ClusterNode | None = None
    ) -> None:
        self.db = db
        self.settings = settings
        self.registry = Registry()
        self.cluster = cluster
        """Set on a replica: agents linked elsewhere are reached through it."""
        self.wakeups = CommandWakeups()
        self.channels = ChannelBroker(self.registry)
        self.scheduler = Scheduler(db, self.registry, self.wakeups.notify)
        self.bridge: HubBridge | None = None
        if cluster is not None:
            # Imported here: the cluster package builds on the hub's registry.
            from fleetgate.controlplane.cluster.bridge import (
                ClusterChannelRegistry,
                ClusterScheduler,
                ClusterWakeups,
                HubBridge,
            )

            wakeups = ClusterWakeups(cluster)
            self.wakeups = wakeups
            self.bridge = HubBridge(
                cluster,
                self.registry,
                self.channels,
                wakeups,
                max_frame_bytes=settings.ws_max_size,
            )
            self.registry.remote = cluster
            self.channels.cluster = self.bridge
            self.channels.open = ClusterChannelRegistry(cluster)
            scheduler = ClusterScheduler(cluster, db, self.registry, wakeups.notify)
            self.scheduler = scheduler
            self.bridge.scheduler = scheduler
        self.reports = ReportWriter(db, max_reports=settings.report_batch)
        self._live: set[AgentConnection] = set()
        """Every accepted backhaul connection, welcomed or not (for the idle sweeper)."""

    def connection(self, server_id: str) -> AgentConnection | None:
        """The live, welcomed connection of a server."""
        return self.registry.get(server_id)

    async def send_command(self, row: CommandRow) -> bool:
        """Send ``command.run`` for ``row`` to its server now; whether it was sent.

        A failed send is not an error: the command stays "sent, not delivered" and the
        agent's next ``hello`` brings it again. A command the agent cannot accept is
        finished instead (``fleetgate.controlplane.hub.undeliverable``).
        """
        conn = self.registry.get(row.server_id)
        if conn is None:
            return False
        sent = await deliver(conn, self.db, row, self.wakeups.notify)
        if sent:
            log.debug("command.sent", command_id=row.id, server_id=row.server_id)
        return sent

    async def work_session_ended(self, row: WorkSessionRow) -> None:
        """Tell the connected agents of the session's servers to revoke it now (a
        ``WorkSessionClock`` listener). An agent that is not connected still refuses
        after ``expires_at`` by its own clock."""
        message = WorkSessionEnded(work_session=row.id, status=row.status.value)
        for server_id in row.server_ids:
            conn = self.registry.get(server_id)
            if conn is not None and await conn.send_quietly(message):
                log.info("work_session.end_sent", work_session=row.id, server_id=server_id)

    async def disconnect(self, server_id: str, reason: str = "server deleted") -> None:
        """Close a server's connection (after it was deleted)."""
        conn = self.registry.get(server_id)
        if conn is not None:
            await conn.close(CLOSE_DELETED, reason)

    def begin_shutdown(self) -> None:
        """The server stops: end the output streams now instead of at the drain timeout."""
        self.wakeups.close()

    async def close_all(self) -> None:
        """Close every agent connection (shutdown)."""
        for conn in self.registry.connections():
            await conn.close(CLOSE_SHUTDOWN, "control plane shutting down")

    async def serve(self, websocket: WebSocket) -> None:
        """The ``/ws/agent/backhaul/`` endpoint: authenticate, then run the session.

        Bad credentials are refused before the websocket is accepted, with a real HTTP
        401 response (the ASGI websocket denial-response extension, which uvicorn
        implements); a server without the extension gets a close before accept (403).
        """
        server = await self._authenticate(websocket)
        if server is None:
            return
        await websocket.accept()
        conn = AgentConnection(websocket, server.id, server.name)
        session = AgentSession(
            conn,
            db=self.db,
            registry=self.registry,
            wakeups=self.wakeups,
            settings=self.settings,
            channels=self.channels,
            writer=self.reports,
            on_link=None if self.cluster is None else self.cluster.link_up,
        )
        self._live.add(conn)
        try:
            await session.run()
        finally:
            self._live.discard(conn)
            if self.cluster is not None and session.welcomed:
                await _cluster_quietly(self.cluster.link_down(conn))

    async def serve_hop(self, websocket: WebSocket, channel_id: str) -> None:
        """The ``/ws/cluster/channels/<id>/`` endpoint: another replica relays the agent's
        side of a channel whose client waits here (``controlplane.cluster.hop``).

        Refused (HTTP 401, before accept) without a valid token of this cluster for this
        channel; on a control plane that is not a replica, always refused.
        """
        claim = None
        if self.cluster is not None:
            claim = verify_hop(self.cluster.secret, channel_id, websocket.headers.get(HOP_HEADER))
        if claim is None:
            log.info("cluster.hop_refused", client=str(websocket.client and websocket.client.host))
            await _deny(websocket)
            return
        await self.channels.serve_agent(websocket, claim.server_id, claim.channel_id)

    async def watch_idle(self) -> None:
        """Close every connection silent for ``agent_idle_timeout`` seconds (forever).

        One sweep per quarter of the timeout (at most every 5 s): a silent connection is
        closed between 1 and 1.25 timeouts after its last frame, at the cost of one task
        for the whole hub instead of one timer per connection.
        """
        idle = self.settings.agent_idle_timeout
        period = min(max(idle / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(period)
            deadline = time.monotonic() - idle
            for conn in [c for c in self._live if c.last_frame_monotonic < deadline]:
                if not conn.closed.is_set():
                    log.info("agent.idle_timeout", server_id=conn.server_id, seconds=idle)
                    await conn.close(CLOSE_IDLE, "idle timeout")

    async def serve_channel(self, websocket: WebSocket, channel_id: str) -> None:
        """The ``/ws/agent/channels/<id>/`` endpoint: an agent attaches a channel."""
        server = await self._authenticate(websocket)
        if server is not None:
            await self.channels.serve_agent(websocket, server.id, channel_id)

    async def serve_pooled(self, websocket: WebSocket) -> None:
        """The ``/ws/agent/pool/`` endpoint: an agent's idle channel websocket."""
        server = await self._authenticate(websocket)
        if server is not None:
            await self.channels.pool.serve(websocket, server.id)

    async def authenticate_agent(self, websocket: WebSocket) -> servers_store.ServerRow | None:
        """The agent's server, or ``None`` after refusing the websocket with HTTP 401."""
        return await self._authenticate(websocket)

    async def _authenticate(self, websocket: WebSocket) -> servers_store.ServerRow | None:
        """The agent's server, or ``None`` after refusing the websocket with HTTP 401."""
        creds = parse_agent_authorization(websocket.headers.get("authorization"))
        server = None
        if creds is not None:
            server = await self.db.read(servers_store.authenticate, *creds)
        if server is None:
            log.info("agent.refused", client=str(websocket.client and websocket.client.host))
            await _deny(websocket)
        return server


async def _cluster_quietly(work: Awaitable[None]) -> None:
    """Cluster bookkeeping at the end of a link: a failure is logged (the link is gone
    here; the others drop it when this replica's heartbeat stops), never raised."""
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the cluster database may be unreachable
        log.warning("cluster.link_down_failed", error=type(exc).__name__)


async def _deny(websocket: WebSocket) -> None:
    response = JSONResponse(
        {"code": "AUTHENTICATION_FAILED", "detail": "unknown server id or wrong key"},
        status_code=401,
    )
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:
        await websocket.close(code=1008)
