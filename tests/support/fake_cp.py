"""A scripted control plane: a real websocket server on loopback driven by the test.

It accepts the agent's backhaul, answers ``hello`` with ``welcome`` and then hands every
frame to the test through a bounded queue; the test sends frames back explicitly. Used to
test the agent side of the protocol in situations the real control plane never produces
(garbage frames, silence, refused credentials).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from fleetgate.shared.protocol import (
    AgentMessage,
    Hello,
    Ping,
    Pong,
    Welcome,
    decode_agent_message,
    encode,
)


__all__ = ["ScriptedControlPlane", "scripted_control_plane"]


@dataclass
class ScriptedControlPlane:
    """State shared between the server and the test."""

    server_id: uuid.UUID
    key: str
    port: int = 0
    accept_auth: bool = True
    auto_pong: bool = True
    connections: asyncio.Queue[ServerConnection] = field(
        default_factory=lambda: asyncio.Queue(maxsize=100)
    )
    frames: asyncio.Queue[AgentMessage] = field(
        default_factory=lambda: asyncio.Queue(maxsize=100_000)
    )
    hellos: list[Hello] = field(default_factory=list)
    current: ServerConnection | None = None

    @property
    def url(self) -> str:
        """The base URL to put in the agent's configuration."""
        return f"http://127.0.0.1:{self.port}"

    async def send(self, frame: str) -> None:
        """Send a raw frame on the current connection."""
        assert self.current is not None, "no agent connected"
        await self.current.send(frame)

    async def next_frame(self, timeout: float = 10.0) -> AgentMessage:
        """The next frame the agent sent (pings answered automatically are skipped)."""
        async with asyncio.timeout(timeout):
            return await self.frames.get()

    async def next_of(self, kind: type[AgentMessage], timeout: float = 10.0) -> AgentMessage:
        """Skip frames until one of type ``kind`` arrives."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frames.get()
                if isinstance(frame, kind):
                    return frame

    def _check_auth(self, connection: ServerConnection, request: Request) -> Response | None:
        expected = f'id="{self.server_id}", key="{self.key}"'
        if not self.accept_auth or request.headers.get("Authorization") != expected:
            return Response(HTTPStatus.UNAUTHORIZED, "Unauthorized", Headers(), b"no\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        self.current = ws
        hello = decode_agent_message(await ws.recv())
        assert isinstance(hello, Hello)
        self.hellos.append(hello)
        await ws.send(encode(Welcome(server_id=self.server_id, server_name="scripted")))
        await self.connections.put(ws)
        async for raw in ws:
            message = decode_agent_message(raw)
            if isinstance(message, Ping) and self.auto_pong:
                await ws.send(encode(Pong(nonce=message.nonce)))
                continue
            await self.frames.put(message)


@asynccontextmanager
async def scripted_control_plane() -> AsyncIterator[ScriptedControlPlane]:
    """Serve a scripted control plane on a free loopback port for the duration."""
    cp = ScriptedControlPlane(server_id=uuid.uuid4(), key=uuid.uuid4().hex)
    server: Server
    async with serve(
        cp._handler,
        "127.0.0.1",
        0,
        process_request=cp._check_auth,
        max_size=64 * 1024 * 1024,
        ping_interval=None,
        compression=None,
    ) as server:
        cp.port = next(iter(server.sockets)).getsockname()[1]
        yield cp
