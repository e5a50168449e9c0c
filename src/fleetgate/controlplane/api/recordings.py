"""Terminal recordings: the agent's upload websocket and the download route.

Upload (``/ws/agent/recordings/<terminal_id>/``, agent credentials): binary frames with the
asciicast file, then ``{"type": "end", "size", "sha256"}``. The control plane writes a
temporary file, checks size and digest, syncs and renames it to
``<db directory>/recordings/<terminal_id>.cast``, links it to the terminal (and so to its
work session), and answers ``{"type": "stored", "size", "sha256"}``; only then does the
agent delete its copy. An upload of a recording already stored replaces it (the agent
retries after a lost answer).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import IO

import structlog
from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.websockets import WebSocket

from fleetgate.controlplane.api.channels import services_of
from fleetgate.controlplane.api.deps import PrincipalDep, ServicesDep
from fleetgate.controlplane.api.websh import is_owner
from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.controlplane.errors import APIError
from fleetgate.controlplane.hub.relay import close_websocket
from fleetgate.controlplane.store import terminals as store
from fleetgate.controlplane.timeutil import now_us
from fleetgate.shared.jsontext import loads as json_loads
from fleetgate.shared.protocol.channels import CLOSE_BAD_REQUEST, CLOSE_UNKNOWN


__all__ = ["AGENT_PATH", "MAX_RECORDING_BYTES", "recordings_dir", "router", "serve_upload"]

log = structlog.get_logger("controlplane.recordings")

router = APIRouter()

AGENT_PATH = "/ws/agent/recordings/{terminal_id}/"
MAX_RECORDING_BYTES = 8 * 1024 * 1024 * 1024
"""Largest recording accepted (the agent's own spool cap is normally far lower)."""


def recordings_dir(settings: ControlPlaneSettings) -> Path:
    """Where recordings are stored: ``recordings`` beside the database."""
    return settings.db_path.parent / "recordings"


@router.get("/api/websh/terminals/{terminal_id}/recording/")
async def download(
    terminal_id: str, principal: PrincipalDep, services: ServicesDep
) -> FileResponse:
    """The terminal's asciicast v2 file (``application/x-asciicast``)."""
    row = await services.db.read(store.get_terminal, terminal_id)
    if row is None or not (principal.is_superuser or is_owner(principal, row)):
        raise APIError(404, "TERMINAL_NOT_FOUND", "No such terminal.")
    path = recordings_dir(services.settings) / f"{row.id}.cast"
    if row.recorded_at is None or not path.is_file():
        raise APIError(404, "RECORDING_NOT_FOUND", "The terminal's recording has not arrived.")
    return FileResponse(path, media_type="application/x-asciicast", filename=f"{row.id}.cast")


async def serve_upload(websocket: WebSocket, terminal_id: str) -> None:
    """The agent's upload of one terminal's recording."""
    services = services_of(websocket)
    server = await services.hub.authenticate_agent(websocket)
    if server is None:
        return
    row = await services.db.read(store.get_terminal, terminal_id)
    await websocket.accept()
    if row is None or row.server_id != server.id:
        await close_websocket(websocket, CLOSE_UNKNOWN, "no such terminal on this server")
        return
    directory = recordings_dir(services.settings)
    await asyncio.to_thread(directory.mkdir, mode=0o700, parents=True, exist_ok=True)
    final = directory / f"{row.id}.cast"
    partial = directory / f".{row.id}.{os.getpid()}.part"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            outcome = await _receive(websocket, file)
            if outcome is None:
                return
            await asyncio.to_thread(_sync, file)
        size, digest = outcome
        await asyncio.to_thread(os.replace, partial, final)
    finally:
        await asyncio.to_thread(partial.unlink, missing_ok=True)
    await services.db.write(store.set_recording, row.id, size=size, sha256=digest, now=now_us())
    log.info("recording.stored", terminal_id=row.id, size=size)
    await websocket.send_text(json.dumps({"type": "stored", "size": size, "sha256": digest}))
    await close_websocket(websocket, 1000, "")


async def _receive(websocket: WebSocket, file: IO[bytes]) -> tuple[int, str] | None:
    """Write the frames to ``file`` until ``end``; None (and the socket closed) on error."""
    digest = hashlib.sha256()
    size = 0
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        data = message.get("bytes")
        if data is not None:
            size += len(data)
            if size > MAX_RECORDING_BYTES:
                await close_websocket(websocket, CLOSE_BAD_REQUEST, "recording too large")
                return None
            digest.update(data)
            await asyncio.to_thread(file.write, data)
            continue
        try:
            end = json_loads(message.get("text") or "")
        except ValueError:
            end = None
        if not isinstance(end, dict) or end.get("type") != "end":
            await close_websocket(websocket, CLOSE_BAD_REQUEST, "expected an end frame")
            return None
        if end.get("size") != size or end.get("sha256") != digest.hexdigest():
            await close_websocket(websocket, CLOSE_BAD_REQUEST, "size or digest mismatch")
            return None
        return size, digest.hexdigest()


def _sync(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())
