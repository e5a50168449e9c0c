"""Issue 14 finding 5: oversized input never poisons an agent.

The API refuses what the agent would refuse (400 ``INVALID_COMMAND`` naming the limit);
a stored command that cannot be sent (older data, a smaller agent limit) or that the
agent refuses as unreadable reaches a final state at once, with its environment erased,
is not sent again on reconnect, and leaves the link up; one not yet sent can be
cancelled.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import TypeAdapter
from sqlalchemy import select
from websockets.sync.client import ClientConnection, connect as sync_connect

from fleetgate.controlplane.store.command_rows import NewCommand
from fleetgate.controlplane.store.commands import insert_command
from fleetgate.controlplane.store.db import connect, transaction
from fleetgate.controlplane.store.tables import commands
from fleetgate.controlplane.timeutil import now_us
from fleetgate.shared.protocol import (
    AgentMessage,
    CommandRun,
    Confirm,
    ErrorMessage,
    Hello,
    Ping,
    Pong,
    Welcome,
    decode_server_message,
    encode,
)
from fleetgate.shared.protocol.limits import MAX_ENV_BYTES, MAX_ENV_VAR_BYTES
from tests.support.agent import running_agent
from tests.support.controlplane import ControlPlaneProcess, FakeAgent, Server
from tests.support.fuzz import count, frames


KIB = 1024
MIB = 1024 * KIB


def _env(total: int, *, char: str = "x", per_var: int = 100 * KIB) -> dict[str, str]:
    return {f"V{i}": char * min(per_var, total - i * per_var) for i in range(-(-total // per_var))}


OVERSIZED: dict[str, tuple[dict[str, Any], str]] = {
    "line": ({"line": "x" * 65_537}, "65536"),
    "env count": ({"env": {f"V{i}": "1" for i in range(257)}}, "256"),
    "one env variable": ({"env": {"BIG": "x" * (200 * KIB)}}, str(MAX_ENV_VAR_BYTES)),
    "env bytes": ({"env": _env(2 * MIB)}, str(MAX_ENV_BYTES)),
    "env of 4-8 MiB": ({"env": _env(6 * MIB)}, str(MAX_ENV_BYTES)),
    "env over 8 MiB": ({"env": _env(9 * MIB)}, str(MAX_ENV_BYTES)),
    # Under the env bounds, but JSON escaping makes the frame larger than 4 MiB.
    "message bytes": ({"env": _env(900 * KIB, char="\x01")}, "4194304"),
}


def _command_count(admin: httpx.Client, server: Server) -> int:
    answer = admin.get("/api/events/commands/", params={"server": server.id})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["count"])


@pytest.mark.parametrize("case", sorted(OVERSIZED))
def test_the_api_refuses_what_the_agent_would_refuse(
    admin: httpx.Client, server: Server, case: str
) -> None:
    fields, limit = OVERSIZED[case]
    before = _command_count(admin, server)
    body = {"server": server.name, "line": "true", "scheduled_at": "2100-01-01T00:00:00Z"}
    answer = admin.post("/api/events/commands/", json={**body, **fields}, timeout=60)
    assert answer.status_code == 400, answer.text[:300]
    error = answer.json()
    assert error["code"] == "INVALID_COMMAND"
    assert limit in error["detail"], error["detail"]
    assert _command_count(admin, server) == before


def _store_old_command(cp: ControlPlaneProcess, server: Server, env: dict[str, str]) -> str:
    """Insert a command as an older control plane (without today's limits) stored it."""
    command_id = str(uuid.uuid4())
    now = now_us()
    conn = connect(cp.database_url)
    try:
        with transaction(conn):
            new = NewCommand(
                id=command_id,
                server_id=server.id,
                shell="system",
                line="true",
                username="root",
                groupname="",
                env=env,
                timeout=None,
                requested_by=None,
                added_at=now,
                scheduled_at=now,
            )
            insert_command(conn, new, sent_at=None, server_name=server.name)
    finally:
        conn.close()
    return command_id


async def _wait_final(admin: httpx.Client, command_id: str, timeout: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            command: dict[str, Any] = (
                await asyncio.to_thread(admin.get, f"/api/events/commands/{command_id}/")
            ).json()
            if command["handled_at"] is not None:
                return command
            await asyncio.sleep(0.05)


def _stored_env(cp: ControlPlaneProcess, command_id: str) -> str:
    conn = connect(cp.database_url)
    try:
        env = conn.execute(select(commands.c.env).where(commands.c.id == command_id)).scalar_one()
    finally:
        conn.close()
    return str(env)


async def _post(admin: httpx.Client, url: str, **kwargs: Any) -> httpx.Response:
    return await asyncio.to_thread(admin.post, url, **kwargs)


async def _still_linked(agent: FakeAgent) -> None:
    await agent.send(Ping(nonce=7))
    assert (await agent.expect(Pong)).nonce == 7


STORED: dict[str, tuple[dict[str, str], str]] = {
    "4-8 MiB env": (_env(5 * MIB), "the limit is 1048576 bytes"),
    "env over 8 MiB": (_env(9 * MIB), "the limit is 1048576 bytes"),
    "frame over 4 MiB": (_env(900 * KIB, char="\x01"), "at most 4194304 bytes"),
}


@pytest.mark.parametrize("case", sorted(STORED))
async def test_a_stored_command_too_large_to_send_is_failed_not_sent(
    control_plane: ControlPlaneProcess, admin: httpx.Client, server: Server, case: str
) -> None:
    env, limit = STORED[case]
    command_id = _store_old_command(control_plane, server, env)
    for attempt in range(2):  # and not again on the next connection
        agent = await FakeAgent.connect(control_plane, server.id, server.key)
        try:
            command = await _wait_final(admin, command_id)
            assert command["error_phase"] == "undeliverable"
            assert command["status"]["text"] == "Error"
            assert limit in command["status"]["message"], command["status"]
            assert _stored_env(control_plane, command_id) == "{}"
            await _still_linked(agent)
            assert not any(isinstance(m, CommandRun) for m in agent.skipped), attempt
        finally:
            await agent.close()
    cancel = await _post(admin, f"/api/events/commands/{command_id}/cancel/")
    assert cancel.status_code == 409  # it is finished: nothing left to cancel


async def test_a_stored_oversized_command_can_be_cancelled_before_it_is_sent(
    control_plane: ControlPlaneProcess, admin: httpx.Client, server: Server
) -> None:
    command_id = _store_old_command(control_plane, server, _env(9 * MIB))
    cancel = await _post(admin, f"/api/events/commands/{command_id}/cancel/")
    assert cancel.status_code == 200, cancel.text
    assert cancel.json()["status"]["text"] == "Cancelled"
    assert _stored_env(control_plane, command_id) == "{}"
    agent = await FakeAgent.connect(control_plane, server.id, server.key)
    try:
        await _still_linked(agent)
        assert not any(isinstance(m, CommandRun) for m in agent.skipped)
    finally:
        await agent.close()


async def test_a_command_the_agent_refuses_as_too_large_reaches_a_final_state(
    control_plane: ControlPlaneProcess, admin: httpx.Client, server: Server
) -> None:
    """An older agent (no limit in its hello) answers ``too_large``: the command fails."""
    agent = await FakeAgent.connect(control_plane, server.id, server.key, hello=False)
    try:
        await agent.send(Hello(agent_version="old", hostname="old"))
        await agent.expect(Welcome)
        created = await _post(
            admin, "/api/events/commands/", json={"server": server.name, "line": "true"}
        )
        assert created.status_code == 201, created.text
        run = await agent.expect(CommandRun)
        refusal = ErrorMessage(code="too_large", message="message too big", ref=str(run.command_id))
        await agent.send(refusal)
        command = await _wait_final(admin, str(run.command_id))
        assert command["error_phase"] == "undeliverable"
        assert "too_large" in command["status"]["message"]
        await _still_linked(agent)
    finally:
        await agent.close()
    again = await FakeAgent.connect(control_plane, server.id, server.key)
    try:
        await _still_linked(again)
        assert not any(isinstance(m, CommandRun) for m in again.skipped)
    finally:
        await again.close()


@pytest.mark.root
async def test_an_agent_with_a_smaller_limit_is_never_sent_a_larger_command(
    control_plane: ControlPlaneProcess, admin: httpx.Client, tmp_path: Path
) -> None:
    """A limit change: the agent accepts 64 KiB frames, the API accepts 4 MiB ones."""
    limits = {"max_message_bytes": 64 * KIB}
    with running_agent(control_plane, tmp_path / "agent", sections={"limits": limits}) as agent:
        body = {"server": agent.name, "line": "true", "env": {"BIG": "x" * (100 * KIB)}}
        created = await _post(admin, "/api/events/commands/", json=body)
        assert created.status_code == 201, created.text
        command = await _wait_final(admin, created.json()["id"])
        assert command["error_phase"] == "undeliverable"
        assert "65536" in command["status"]["message"]
        assert _stored_env(control_plane, command["id"]) == "{}"
        # The link stayed up: the next command runs.
        ok = await _post(
            admin, "/api/events/commands/", json={"server": agent.name, "line": "true"}
        )
        assert ok.status_code == 201, ok.text
        done = await _wait_final(admin, ok.json()["id"])
        assert done["status"]["text"] == "Success"


DEEP_FRAMES = {
    "array": "[" * 100_000 + "]" * 100_000,
    "in a field": '{"type": "ping", "nonce": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "objects": '{"a":' * 50_000 + "1" + "}" * 50_000,
}


@pytest.mark.parametrize("case", sorted(DEEP_FRAMES))
async def test_deeply_nested_backhaul_frames_are_malformed_and_the_link_survives(
    control_plane: ControlPlaneProcess, server: Server, case: str
) -> None:
    """Issue 14 finding 7: the control plane answers ``malformed`` (it closed with 1011)."""
    agent = await FakeAgent.connect(control_plane, server.id, server.key)
    try:
        await agent.send(DEEP_FRAMES[case])
        error = await agent.expect(ErrorMessage)
        assert error.code == "malformed"
        assert "deeper than" in error.message
        await _still_linked(agent)
    finally:
        await agent.close()


@pytest.mark.parametrize("case", sorted(DEEP_FRAMES))
def test_deeply_nested_http_bodies_are_refused_clearly(
    admin: httpx.Client, server: Server, case: str
) -> None:
    """Issue 14 finding 7, HTTP: a clear 400 naming the limit; the connection is reused."""
    for path, code in [
        ("/api/events/commands/", "INVALID_COMMAND"),
        ("/api/work-sessions/sessions/", "INVALID_REQUEST"),
        ("/api/auth/tokens/", "INVALID_REQUEST"),
    ]:
        answer = admin.post(
            path, content=DEEP_FRAMES[case], headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 400, answer.text[:200]
        assert answer.json() == {"code": code, "detail": "body: JSON nested deeper than 32 levels"}
    assert admin.get("/api/auth/whoami/").status_code == 200


def _exchange(cp: ControlPlaneProcess, request: bytes) -> bytes:
    """Send ``request`` on a raw connection; everything the server answers until it closes."""
    host, port = cp.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.settimeout(10)  # bounds every wait below: a hang fails the test
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_oversized_http_bodies_are_refused_without_reading_them(
    control_plane: ControlPlaneProcess,
) -> None:
    # Only the head and a little of the declared 16 MiB + 1 are sent: the answer comes
    # without the body, and the connection is closed.
    auth = control_plane.auth_headers()["Authorization"]
    head = (
        "POST /api/work-sessions/sessions/ HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: {auth}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {16 * MIB + 1}\r\n\r\n"
    )
    answer = _exchange(control_plane, head.encode() + b"[" * 1000)
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413 "), answer[:300]
    error = json.loads(body)
    assert error["code"] == "REQUEST_TOO_LARGE"
    assert "16777216" in error["detail"]


UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)
HEADS = {
    "upgrade, 9 KB header": ("/ws/agent/backhaul/", UPGRADE + "X-Big: " + "a" * 9000 + "\r\n\r\n"),
    "http, 9 KB header": ("/api/auth/whoami/", "X-Big: " + "a" * 9000 + "\r\n\r\n"),
    "upgrade, 150 headers": (
        "/ws/websh/x/",
        UPGRADE + "".join(f"X-{i}: v\r\n" for i in range(150)) + "\r\n",
    ),
    # A header line that never ends: refused once it passes the bound, not buffered.
    "http, unterminated": ("/api/auth/whoami/", "X-Big: " + "a" * 20_000),
}


@pytest.mark.parametrize("case", sorted(HEADS))
def test_oversized_request_heads_get_431_and_are_closed(
    control_plane: ControlPlaneProcess, case: str
) -> None:
    """Issue 14 finding 7: a websocket upgrade with a ~9 KB header got no answer."""
    path, rest = HEADS[case]
    answer = _exchange(control_plane, f"GET {path} HTTP/1.1\r\nHost: test\r\n{rest}".encode())
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_a_head_just_under_the_bound_is_served(control_plane: ControlPlaneProcess) -> None:
    headers = {**control_plane.auth_headers(), "X-Padding": "a" * 7000}
    with httpx.Client(base_url=control_plane.url) as client:
        assert client.get("/api/auth/whoami/", headers=headers).status_code == 200


@pytest.fixture(scope="module")
def fuzz_link(control_plane: ControlPlaneProcess) -> Iterator[ClientConnection]:
    """One backhaul connection of a fake agent, kept across the fuzz examples."""
    server = control_plane.new_server(f"fuzz-{uuid.uuid4().hex[:8]}")
    headers = {"Authorization": f'id="{server.id}", key="{server.key}"'}
    with sync_connect(control_plane.backhaul_url, additional_headers=headers, max_size=None) as ws:
        ws.send(encode(Hello(agent_version="fuzz", hostname="fuzz")))
        assert isinstance(decode_server_message(ws.recv(timeout=10)), Welcome)
        yield ws


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(batch=frames(TypeAdapter(AgentMessage).json_schema()))
def test_fuzzed_frames_never_break_the_backhaul_link(
    fuzz_link: ClientConnection, batch: list[str | bytes]
) -> None:
    """Structured fuzz on a live link: after any frames, the control plane still answers."""
    for frame in batch:
        count("backhaul, live link to the control plane")
        fuzz_link.send(frame)
    nonce = uuid.uuid4().int % 2**31
    fuzz_link.send(encode(Ping(nonce=nonce)))
    while True:  # errors (and confirms) first, then the pong: the link is alive
        reply = decode_server_message(fuzz_link.recv(timeout=10))
        if isinstance(reply, Pong) and reply.nonce == nonce:
            break
        # A fuzzed ping of an earlier frame gets its own pong.
        assert isinstance(reply, ErrorMessage | Confirm | CommandRun | Pong), reply
