"""The FastAPI application: routes, error handlers, and the lifespan that owns the DB,
the hub and the scheduler task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, WebSocket

from fleetgate.controlplane.api import (
    commands,
    files,
    identity,
    recordings,
    servers,
    ssh,
    tunnels,
    websh,
    worksessions,
)
from fleetgate.controlplane.api.deps import Services
from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.controlplane.errors import install_error_handlers
from fleetgate.controlplane.grants import GrantSigner, key_path, load_or_create_key
from fleetgate.controlplane.hub import Hub
from fleetgate.controlplane.hub.worksessions import WorkSessionClock
from fleetgate.controlplane.sshca import SshAuthority, ca_key_path, load_or_create_ca
from fleetgate.controlplane.store import Database, servers as servers_store


__all__ = ["AGENT_CHANNEL_PATH", "BACKHAUL_PATH", "create_app"]

BACKHAUL_PATH = "/ws/agent/backhaul/"
AGENT_CHANNEL_PATH = "/ws/agent/channels/{channel_id}/"


def create_app(settings: ControlPlaneSettings | None = None) -> FastAPI:
    """Build the application; the database is opened by the lifespan, not here."""
    settings = settings or ControlPlaneSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.db_path)
        await db.open()
        try:
            await db.write(servers_store.reset_connections)
            hub = Hub(db, settings)
            clock = WorkSessionClock(db)
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
            clock.listeners.append(websh.session_ended_listener(app.state.services))
            async with asyncio.TaskGroup() as tg:
                scheduler = tg.create_task(hub.scheduler.run(), name="scheduler")
                sessions = tg.create_task(clock.run(), name="work-session-clock")
                try:
                    yield
                finally:
                    await hub.close_all()
                    scheduler.cancel()
                    sessions.cancel()
        finally:
            await db.close()

    app = FastAPI(
        title="fleet control plane",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    install_error_handlers(app)
    app.include_router(commands.router)  # the hot routes first: matching is in order
    app.include_router(servers.router)
    app.include_router(identity.router)
    app.include_router(worksessions.router)
    app.include_router(files.router)
    app.include_router(tunnels.router)
    app.include_router(tunnels.ws_router)
    app.include_router(websh.router)
    app.include_router(recordings.router)
    app.include_router(ssh.router)

    @app.websocket(BACKHAUL_PATH)
    async def backhaul(websocket: WebSocket) -> None:
        services: Services = websocket.app.state.services
        await services.hub.serve(websocket)

    @app.websocket(AGENT_CHANNEL_PATH)
    async def agent_channel(websocket: WebSocket, channel_id: str) -> None:
        services: Services = websocket.app.state.services
        await services.hub.serve_channel(websocket, channel_id)

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
