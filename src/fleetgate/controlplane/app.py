"""The FastAPI application: routes, error handlers, and the lifespan that owns the DB,
the hub and the scheduler task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, WebSocket

from fleetgate.controlplane.api import (
    commands,
    fanout_reads,
    fanouts,
    files,
    identity,
    recordings,
    server_labels,
    servers,
    ssh,
    tunnels,
    tunnelstreams,
    websh,
    worksession_reads,
    worksessions,
)
from fleetgate.controlplane.api.bodies import BoundedBodies
from fleetgate.controlplane.api.deps import Services
from fleetgate.controlplane.background import OnFailure, run_in_background, stop_process
from fleetgate.controlplane.cluster.bridge import ClusterClock
from fleetgate.controlplane.cluster.hoptoken import HOP_PATH
from fleetgate.controlplane.cluster.runtime import cluster_loops, new_node, start_node
from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.controlplane.console import mount as console
from fleetgate.controlplane.errors import install_error_handlers
from fleetgate.controlplane.grants import GrantSigner, key_path, load_or_create_key
from fleetgate.controlplane.hub import Hub
from fleetgate.controlplane.hub.revocation import Revoker
from fleetgate.controlplane.hub.worksessions import WorkSessionClock
from fleetgate.controlplane.sshca import SshAuthority, ca_key_path, load_or_create_ca
from fleetgate.controlplane.store import Database, servers as servers_store


__all__ = ["AGENT_CHANNEL_PATH", "AGENT_POOL_PATH", "BACKHAUL_PATH", "create_app"]

BACKHAUL_PATH = "/ws/agent/backhaul/"
AGENT_CHANNEL_PATH = "/ws/agent/channels/{channel_id}/"
AGENT_POOL_PATH = "/ws/agent/pool/"


def create_app(
    settings: ControlPlaneSettings | None = None, *, on_failure: OnFailure = stop_process
) -> FastAPI:
    """Build the application; the database is opened by the lifespan, not here.

    ``on_failure`` is called when a background loop (scheduler, work-session clock)
    fails; by default the process stops gracefully so that its supervisor restarts it.
    """
    settings = settings or ControlPlaneSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Closed in reverse order: open channels and agents first, then the background
        # loops, then the database.
        async with AsyncExitStack() as stack:
            db = Database(settings.database)
            await db.open()
            stack.push_async_callback(db.close)
            node = None
            if not settings.cluster:
                await db.write(servers_store.reset_connections)
            else:
                # A replica: the other replicas' agents stay connected; those of dead
                # replicas are marked disconnected by the leader's sweep.
                node = new_node(settings)
                await start_node(node, db)
                stack.push_async_callback(node.leave)
            hub = Hub(db, settings, node)
            clock = WorkSessionClock(db) if node is None else ClusterClock(node, db)
            clock.listeners.append(hub.work_session_ended)
            key = await asyncio.to_thread(load_or_create_key, key_path(settings.db_path))
            ca_key = await asyncio.to_thread(load_or_create_ca, ca_key_path(settings.db_path))
            app.state.services = Services(
                settings=settings,
                db=db,
                hub=hub,
                work_sessions=clock,
                signer=GrantSigner(key),
                ssh_ca=SshAuthority(ca_key),
            )
            app.state.tunnels = tunnels.install(app.state.services)
            app.state.revoker = Revoker(db, hub.channels, app.state.tunnels)
            clock.listeners.append(app.state.revoker.session_ended)
            loops = {
                "scheduler": hub.scheduler.run,
                "work-session-clock": clock.run,
                "report-writer": hub.reports.run,
                "idle-sweeper": hub.watch_idle,
            }
            if node is not None and hub.bridge is not None:
                app.state.revoker.broadcast = node.broadcast_revocation
                hub.bridge.revoker = app.state.revoker
                hub.bridge.clock = clock
                hub.bridge.tunnels = app.state.tunnels
                app.state.tunnels.on_closed = node.broadcast_tunnel_closed
                del loops["scheduler"], loops["work-session-clock"]  # the leader's
                loops.update(cluster_loops(node, hub, clock))
            await stack.enter_async_context(run_in_background(loops, on_failure))
            stack.push_async_callback(hub.close_all)
            yield

    app = FastAPI(
        title="fleet control plane",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    install_error_handlers(app)
    # Bodies up to 4 messages: a too large command still reaches validation and gets
    # INVALID_COMMAND naming the limit it breaks; beyond that, 413 without buffering.
    app.add_middleware(BoundedBodies, max_bytes=4 * settings.max_message_bytes)
    app.include_router(commands.router)  # the hot routes first: matching is in order
    app.include_router(servers.router)
    app.include_router(server_labels.router)
    app.include_router(fanouts.router)
    app.include_router(fanout_reads.router)
    app.include_router(identity.router)
    app.include_router(worksessions.router)
    app.include_router(worksession_reads.router)
    app.include_router(files.router)
    app.include_router(tunnels.router)
    app.include_router(tunnelstreams.ws_router)
    app.include_router(websh.router)
    app.include_router(recordings.router)
    app.include_router(ssh.router)
    console.install(app)

    @app.websocket(BACKHAUL_PATH)
    async def backhaul(websocket: WebSocket) -> None:
        services: Services = websocket.app.state.services
        await services.hub.serve(websocket)

    @app.websocket(AGENT_CHANNEL_PATH)
    async def agent_channel(websocket: WebSocket, channel_id: str) -> None:
        services: Services = websocket.app.state.services
        await services.hub.serve_channel(websocket, channel_id)

    @app.websocket(AGENT_POOL_PATH)
    async def agent_pool(websocket: WebSocket) -> None:
        services: Services = websocket.app.state.services
        await services.hub.serve_pooled(websocket)

    @app.websocket(HOP_PATH)
    async def cluster_channel(websocket: WebSocket, channel_id: str) -> None:
        services: Services = websocket.app.state.services
        await services.hub.serve_hop(websocket, channel_id)

    @app.websocket(websh.CLIENT_PATH)
    async def websh_client(websocket: WebSocket, terminal_id: str) -> None:
        await websh.serve_client(websocket, terminal_id)

    @app.websocket(ssh.CLIENT_PATH)
    async def ssh_client(websocket: WebSocket, server: str) -> None:
        await ssh.serve_client(websocket, server)

    @app.websocket(recordings.AGENT_PATH)
    async def recording_upload(websocket: WebSocket, terminal_id: str) -> None:
        await recordings.serve_upload(websocket, terminal_id)

    return app
