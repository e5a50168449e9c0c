"""One websocket, one stream after another (``?defer=1&reuse=1``): a stream that ended
with ``end`` frames both ways leaves the client's websocket waiting for its next ``open``
(and the agent's pooled one for its next ``channel.open``); each stream is checked again;
any other end closes the websocket for good."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fleetgate.shared.protocol.tunnel import END_FRAME, EOF_FRAME, OPEN_FRAME, REUSE_HEADER
from tests.integration.tunnel.conftest import REFUSED_PORT, TunnelStack
from tests.support.accounts import new_login
from tests.support.controlplane import ControlPlaneProcess
from tests.support.tunnel import agentctl_tunnel, echo_server
from tests.support.waiting import eventually


pytestmark = pytest.mark.timeout(90)


async def _answer_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads to EOF, then answers how much it got: data after the client's half-close."""
    try:
        got = await reader.read()
        writer.write(b"got %d" % len(got))
        await writer.drain()
    finally:
        writer.close()


@asynccontextmanager
async def _after_eof_server() -> AsyncIterator[int]:
    server = await asyncio.start_server(_answer_after_eof, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def _create(cp: ControlPlaneProcess, key: str, server: str, port: int) -> dict[str, str]:
    with cp.client(key) as client:
        created = client.post("/api/tunnels/", json={"server": server, "remote_port": port})
        assert created.status_code == 201, created.text
    tunnel: dict[str, str] = created.json()
    return tunnel


def _url(cp: ControlPlaneProcess, tunnel: dict[str, str]) -> str:
    return cp.url.replace("http://", "ws://") + tunnel["streams_url"] + "?defer=1&reuse=1"


def _streams(cp: ControlPlaneProcess, key: str, tunnel: dict[str, str]) -> int:
    with cp.client(key) as client:
        return int(client.get(f"/api/tunnels/{tunnel['id']}/").json()["streams"])


async def _stream(ws: ClientConnection, payload: bytes) -> bytes:
    """One stream on ``ws``: open, the payload, our eof; what came back until the
    target's eof; then our ``end`` (the control plane answers nothing)."""
    await ws.send(OPEN_FRAME)
    await ws.send(payload)
    await ws.send(EOF_FRAME)
    got = b""
    async with asyncio.timeout(20):
        while isinstance(frame := await ws.recv(), bytes):
            got += frame
        assert frame == EOF_FRAME, frame
        await ws.send(END_FRAME)
    return got


def _reused(tstack: TunnelStack) -> int:
    """Streams the agent ended with ``end`` (its pooled websocket kept) so far."""
    return tstack.agent.log_tail(2_000_000).count('"reused": true')


async def _warm(tstack: TunnelStack, key: str, tunnel: dict[str, str]) -> None:
    """Until the agent ends a stream with ``end``: a cold agent's first stream comes on a
    websocket it dials for that channel (closed after it), then it keeps pooled ones."""
    cp = tstack.cp

    async def reused() -> bool:
        before = _reused(tstack)
        async with connect(_url(cp, tunnel), additional_headers=cp.auth_headers(key)) as ws:
            assert await _stream(ws, b"warm") == b"got 4"
        await eventually(lambda: _streams(cp, key, tunnel) == 0, what="warm-up ended")
        return _reused(tstack) > before

    await eventually(reused, what="a stream on a pooled websocket of the agent")


async def _closed_with(ws: ClientConnection) -> tuple[int | None, dict[str, str]]:
    async with asyncio.timeout(20):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
    reason = json.loads(ws.close_reason) if ws.close_code == 4403 and ws.close_reason else {}
    return ws.close_code, reason


async def test_a_clean_stream_leaves_the_websocket_for_the_next(tstack: TunnelStack) -> None:
    cp, key = tstack.cp, tstack.cp.admin_token
    async with _after_eof_server() as port:
        tunnel = _create(cp, key, tstack.server, port)
        await _warm(tstack, key, tunnel)
        before = _reused(tstack)
        async with connect(_url(cp, tunnel), additional_headers=cp.auth_headers(key)) as ws:
            assert ws.response is not None
            assert ws.response.headers.get(REUSE_HEADER) == "1"
            for size in (10, 200_000, 3):
                # The answer comes after our eof: the half-close is carried on every stream.
                assert await _stream(ws, b"x" * size) == b"got %d" % size
                # Between streams nothing is open; the websocket waits for its next open.
                await eventually(lambda: _streams(cp, key, tunnel) == 0, what="stream ended")
    # The agent's pooled websocket was given back after each stream too.
    await eventually(lambda: _reused(tstack) >= before + 3, what="the agent's reused streams")


async def test_without_reuse_a_stream_ends_with_its_websocket(tstack: TunnelStack) -> None:
    """A client that did not ask (an older agentctl): no header, no ``end`` to it; it
    closes after both eof, as before, and the stream ends."""
    cp, key = tstack.cp, tstack.cp.admin_token
    async with _after_eof_server() as port:
        tunnel = _create(cp, key, tstack.server, port)
        await _warm(tstack, key, tunnel)
        url = _url(cp, tunnel).replace("&reuse=1", "")
        async with connect(url, additional_headers=cp.auth_headers(key)) as ws:
            assert ws.response is not None
            assert ws.response.headers.get(REUSE_HEADER) is None
            await ws.send(OPEN_FRAME)
            await ws.send(b"abc")
            await ws.send(EOF_FRAME)
            async with asyncio.timeout(20):
                assert await ws.recv() == b"got 3"
                assert await ws.recv() == EOF_FRAME
        await eventually(lambda: _streams(cp, key, tunnel) == 0, what="stream ended")


@pytest.mark.parametrize("revoke", ["tunnel", "token"])
async def test_every_stream_on_a_reused_websocket_is_checked(
    tstack: TunnelStack, revoke: str
) -> None:
    cp = tstack.cp
    _, _, login = new_login(cp, superuser=True)
    with cp.client(login) as client:
        made = client.post("/api/auth/tokens/", json={"name": f"reuse-{revoke}"})
        assert made.status_code == 201, made.text
    token_id, key = made.json()["id"], made.json()["key"]
    async with _after_eof_server() as port:
        tunnel = _create(cp, key, tstack.server, port)
        await _warm(tstack, key, tunnel)
        async with connect(_url(cp, tunnel), additional_headers=cp.auth_headers(key)) as ws:
            assert await _stream(ws, b"first") == b"got 5"
            with cp.client(login) as client:
                if revoke == "tunnel":
                    gone = client.delete(f"/api/tunnels/{tunnel['id']}/")
                else:
                    gone = client.delete(f"/api/auth/tokens/{token_id}/")
                assert gone.status_code == 204
            await ws.send(OPEN_FRAME)
            code, reason = await _closed_with(ws)
    assert code == 4403
    assert reason["code"] == ("TUNNEL_CLOSED" if revoke == "tunnel" else "AUTHENTICATION_FAILED")


async def test_a_stream_that_fails_closes_its_websocket(tstack: TunnelStack) -> None:
    """An error instead of a clean end: the websocket is closed, never reused."""
    cp, key = tstack.cp, tstack.cp.admin_token
    async with echo_server() as port:
        tunnel = _create(cp, key, tstack.server, port)
        async with connect(_url(cp, tunnel), additional_headers=cp.auth_headers(key)) as ws:
            await ws.send(OPEN_FRAME)
            await ws.send(b"ping")
            assert await ws.recv() == b"ping"
            error = {"type": "error", "code": "tunnel_reset", "message": "client reset"}
            await ws.send(json.dumps(error))
            code, _ = await _closed_with(ws)
    assert code == 1000
    await eventually(lambda: _streams(cp, key, tunnel) == 0, what="stream ended")


async def test_an_end_before_the_stream_ended_is_refused(tstack: TunnelStack) -> None:
    cp, key = tstack.cp, tstack.cp.admin_token
    async with echo_server() as port:
        tunnel = _create(cp, key, tstack.server, port)
        async with connect(_url(cp, tunnel), additional_headers=cp.auth_headers(key)) as ws:
            await ws.send(OPEN_FRAME)
            await ws.send(b"ping")
            assert await ws.recv() == b"ping"
            await ws.send(END_FRAME)  # no eof either way yet
            code, _ = await _closed_with(ws)
    assert code == 4400
    assert ws.close_reason == "client sent end before the stream ended"
    await eventually(lambda: _streams(cp, key, tunnel) == 0, what="stream ended")


async def test_agentctl_carries_sequential_connections_on_reused_websockets(
    tstack: TunnelStack,
) -> None:
    before = _reused(tstack)
    async with echo_server() as port:
        with agentctl_tunnel(tstack.cli, tstack.server, port) as tunnel:
            for i in range(6):
                reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.local_port)
                writer.write(b"hello %d" % i)
                writer.write_eof()  # the echo server echoes, then half-closes
                assert await asyncio.wait_for(reader.read(), 20) == b"hello %d" % i
                writer.close()
                await writer.wait_closed()
            await eventually(
                lambda: _reused(tstack) >= before + 6,
                what="six reused streams",
            )


async def test_a_refusal_by_the_agent_reaches_a_stream_whose_bytes_followed_its_open(
    tstack: TunnelStack,
) -> None:
    """On a pooled websocket the client's first bytes follow the ``channel.open`` without
    waiting for the agent's answer: the agent's refusal still closes the stream with its
    code (not a lost connection), nothing is carried, and the next stream is served."""
    cp, key = tstack.cp, tstack.cp.admin_token
    async with _after_eof_server() as port:
        allowed = _create(cp, key, tstack.server, port)
        await _warm(tstack, key, allowed)  # the agent keeps pooled websockets from now on
        refused = _create(cp, key, tstack.server, REFUSED_PORT)
        for _ in range(3):
            async with connect(_url(cp, refused), additional_headers=cp.auth_headers(key)) as ws:
                await ws.send(OPEN_FRAME)
                await ws.send(b"must not be carried")
                await ws.send(EOF_FRAME)
                code, reason = await _closed_with(ws)
            assert code == 4403
            assert reason["code"] == "tunnel_port_not_allowed", reason
        await eventually(lambda: _streams(cp, key, refused) == 0, what="refused streams gone")
        async with connect(_url(cp, allowed), additional_headers=cp.auth_headers(key)) as ws:
            assert await _stream(ws, b"after") == b"got 5"


def _websockets_to(pid: int, port: int) -> set[int]:
    """The local ports of process ``pid``'s established TCP connections to ``port`` on
    loopback (from /proc: its socket inodes, the kernel's TCP table)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if state == "01" and inode in inodes and int(remote.rsplit(":", 1)[1], 16) == port:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


async def test_overlapping_connections_give_their_websockets_back_without_new_dials(
    tstack: TunnelStack,
) -> None:
    """A connection that arrives while the previous one is still open takes the other
    ready websocket; each one is given back when its stream ends, and stands for itself:
    agentctl dials no replacement (which it would close again once the other came back),
    so it keeps the same websockets however the streams overlap."""
    cp_port = urlsplit(tstack.cp.url).port
    assert cp_port is not None
    async with echo_server() as port:
        with agentctl_tunnel(tstack.cli, tstack.server, port) as tunnel:
            pid = tunnel.proc.pid
            await eventually(lambda: len(_websockets_to(pid, cp_port)) == 2, what="two ready")
            before = _websockets_to(pid, cp_port)
            for i in range(3):
                first = await asyncio.open_connection("127.0.0.1", tunnel.local_port)
                second = await asyncio.open_connection("127.0.0.1", tunnel.local_port)
                for n, (_, writer) in enumerate((first, second)):
                    writer.write(b"overlap %d.%d" % (i, n))
                    writer.write_eof()
                for n, (reader, writer) in enumerate((first, second)):
                    assert await asyncio.wait_for(reader.read(), 20) == b"overlap %d.%d" % (i, n)
                    writer.close()
                    await writer.wait_closed()
                await eventually(
                    lambda: len(_websockets_to(pid, cp_port)) == 2, what="both given back"
                )
            assert _websockets_to(pid, cp_port) == before
