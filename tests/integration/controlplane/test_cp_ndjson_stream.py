"""A streaming create's answer (``api.ndjson``) on the wire and its clean-up.

The real application runs in this process under uvicorn (on a database bootstrapped by
the real CLI), so the test can look at the hub's wake-up registry: a streaming create
subscribes before its command is stored, and whatever ends the answer (its last line,
the client leaving, a refusal) must release that subscription. The agent is a real
websocket client speaking the backhaul protocol; the clients speak raw HTTP/1.1 over
loopback, so the test sees the bytes as the server wrote them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from fleetgate.controlplane.app import create_app
from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.controlplane.hub.wakeups import CommandWakeups
from fleetgate.controlplane.server import ControlPlaneServer, bind_socket
from fleetgate.shared.protocol import (
    CommandAcked,
    CommandDelivered,
    CommandFinished,
    CommandRun,
    Hello,
    Welcome,
)
from tests.support.controlplane import FakeAgent, Server, running_control_plane
from tests.support.database import backend
from tests.support.waiting import eventually


__all__ = ["backend"]  # on SQLite and on PostgreSQL

TERMINATOR = b"0\r\n\r\n"
"""The end of a chunked body."""


@dataclass
class Stack:
    port: int
    token: str
    server: str
    agent: FakeAgent
    wakeups: CommandWakeups


@dataclass(frozen=True)
class Bootstrapped:
    settings: ControlPlaneSettings
    token: str
    server: Server


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Bootstrapped:
    """A database with an admin token and a server, made by the real CLI (once)."""
    with running_control_plane(tmp_path_factory.mktemp("cp")) as cp:
        server = cp.new_server("web-01")
        settings = ControlPlaneSettings(db_path=cp.db_path, database_url=cp.database_url)
        return Bootstrapped(settings, cp.admin_token, server)


@pytest.fixture
async def stack(bootstrapped: Bootstrapped) -> AsyncIterator[Stack]:
    settings, token, server = bootstrapped.settings, bootstrapped.token, bootstrapped.server
    app = create_app(settings)
    sock = bind_socket("127.0.0.1", 0)
    port = int(sock.getsockname()[1])
    uv = ControlPlaneServer(app, settings)
    async with asyncio.TaskGroup() as tg:
        serving = tg.create_task(uv.serve(sockets=[sock]))
        await eventually(lambda: uv.started, what="uvicorn started")
        ws = await ws_connect(
            f"ws://127.0.0.1:{port}/ws/agent/backhaul/",
            additional_headers={"Authorization": f'id="{server.id}", key="{server.key}"'},
            max_size=None,
            ping_interval=None,
        )
        agent = FakeAgent(ws, server.id)
        await agent.send(Hello(agent_version="test", hostname="fake"))
        await agent.expect(Welcome)
        try:
            yield Stack(port, token, server.name, agent, app.state.services.hub.wakeups)
        finally:
            await agent.close()
            uv.should_exit = True
            await serving


async def _post_streaming(stack: Stack, body: dict[str, Any]) -> tuple[asyncio.StreamReader, Any]:
    """Send ``POST /api/events/commands/?stream=true``; the open connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    payload = json.dumps(body).encode()
    writer.write(
        b"POST /api/events/commands/?stream=true HTTP/1.1\r\nhost: test\r\n"
        b'authorization: token="' + stack.token.encode() + b'"\r\n'
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(payload) + payload
    )
    await writer.drain()
    return reader, writer


async def _read_until(reader: asyncio.StreamReader, marker: bytes, reads: list[bytes]) -> bytes:
    """Read until ``marker`` was received; every ``read`` is kept in ``reads``."""
    data = b""
    while marker not in data:
        chunk = await reader.read(65536)
        assert chunk, f"connection closed before {marker!r}: {data!r}"
        reads.append(chunk)
        data += chunk
    return data


async def _finish(agent: FakeAgent, command_id: uuid.UUID) -> None:
    now = datetime.now(UTC)
    rids = []
    for message in (
        CommandDelivered(rid=agent.next_rid(), command_id=command_id, delivered_at=now),
        CommandAcked(rid=agent.next_rid(), command_id=command_id, acked_at=now),
        CommandFinished(
            rid=agent.next_rid(),
            command_id=command_id,
            handled_at=now,
            elapsed_time=0.001,
            exit_code=0,
            success=True,
            result="",
        ),
    ):
        rids.append(message.rid)
        await agent.send(message)
    await agent.confirmed(rids)


async def test_the_finished_line_ends_the_body_in_the_same_write(stack: Stack) -> None:
    """The last line and the end of the chunked body leave together: no read by the
    client ends between them (one wake-up of the client instead of two)."""
    async with asyncio.timeout(20):
        reader, writer = await _post_streaming(stack, {"server": stack.server, "line": "true"})
        reads: list[bytes] = []
        head = await _read_until(reader, b'"event":"created"', reads)
        assert head.startswith(b"HTTP/1.1 201 ")
        run = await stack.agent.expect(CommandRun)
        assert stack.wakeups  # the stream watches its command
        await _finish(stack.agent, run.command_id)
        data = head + await _read_until(reader, TERMINATOR, reads)
        writer.close()
    assert b'"event":"finished"' in data
    assert data.endswith(TERMINATOR)
    last_read = next(chunk for chunk in reads if b'"event":"finished"' in chunk)
    assert last_read.endswith(TERMINATOR), reads
    await eventually(lambda: len(stack.wakeups) == 0, what="the subscription released")


async def test_a_client_leaving_a_streaming_create_releases_its_subscription(
    stack: Stack,
) -> None:
    """The client goes away while its command runs: the answer stops and the command's
    subscription is released (nothing is left per abandoned stream)."""
    async with asyncio.timeout(20):
        reader, writer = await _post_streaming(stack, {"server": stack.server, "line": "sleep 9"})
        await _read_until(reader, b'"event":"created"', [])
        await stack.agent.expect(CommandRun)
        assert len(stack.wakeups) == 1
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: len(stack.wakeups) == 0, what="the subscription released")


async def test_a_scheduled_streaming_create_waits_and_the_cancel_ends_it(stack: Stack) -> None:
    """A command scheduled for later: its stream waits (no output can come before it is
    sent) and ends with the cancel's ``finished`` line."""
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    async with asyncio.timeout(20):
        body = {"server": stack.server, "line": "true", "scheduled_at": later}
        reader, writer = await _post_streaming(stack, body)
        head = await _read_until(reader, b'"event":"created"', [])
        start = head.index(b'{"event":"created"')
        created = json.loads(head[start : head.index(b"\n", start)])
        command_id = created["command"]["id"]
        cancel_reader, cancel_writer = await asyncio.open_connection("127.0.0.1", stack.port)
        cancel_writer.write(
            f"POST /api/events/commands/{command_id}/cancel/ HTTP/1.1\r\nhost: test\r\n"
            f'authorization: token="{stack.token}"\r\ncontent-length: 0\r\n\r\n'.encode()
        )
        assert (await cancel_reader.readline()).startswith(b"HTTP/1.1 200 ")
        cancel_writer.close()
        data = await _read_until(reader, TERMINATOR, [])
        writer.close()
    finished = json.loads(data[data.index(b'{"event":"finished"') :].split(b"\n")[0])
    assert finished["command"]["status"]["text"] == "Cancelled"
    await eventually(lambda: len(stack.wakeups) == 0, what="the subscription released")


async def test_a_refused_streaming_create_leaves_no_subscription(stack: Stack) -> None:
    """Refused by the gate, after the subscription was taken (a login names a work
    session that does not exist): a plain error answer, and nothing left behind."""
    base = f"http://127.0.0.1:{stack.port}"
    admin = {"Authorization": f'token="{stack.token}"'}
    async with asyncio.timeout(20), httpx.AsyncClient(base_url=base, timeout=10) as client:
        name = f"user-{uuid.uuid4().hex[:8]}"
        user = {"username": name, "email": f"{name}@example.com", "password": "pw-123456"}
        response = await client.post(
            "/api/iam/users/", json={**user, "server_username": "deploy"}, headers=admin
        )
        assert response.status_code == 201, response.text
        response = await client.post(
            "/api/auth/login/", json={"username": name, "password": "pw-123456"}
        )
        login = {"Authorization": f'token="{response.json()["token"]}"'}
        body = {"server": stack.server, "line": "true", "work_session": str(uuid.uuid4())}
        response = await client.post("/api/events/commands/?stream=true", json=body, headers=login)
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/json"
    assert len(stack.wakeups) == 0
