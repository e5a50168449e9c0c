"""Deferred streams (``?defer=1``): the websocket is accepted at once, and the stream is
authorized and opened only when ``{"type": "open"}`` arrives; every refusal then is a
close 4403 with ``{"code", "detail"}``. ``agentctl tunnel`` keeps such websockets ready."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fleetgate.shared.protocol.tunnel import OPEN_FRAME
from tests.integration.tunnel.conftest import TunnelStack
from tests.support.accounts import new_login
from tests.support.controlplane import ControlPlaneProcess
from tests.support.tunnel import echo_server
from tests.support.waiting import eventually


pytestmark = pytest.mark.timeout(60)


def _create(cp: ControlPlaneProcess, key: str, server: str, port: int) -> dict[str, str]:
    with cp.client(key) as client:
        created = client.post("/api/tunnels/", json={"server": server, "remote_port": port})
        assert created.status_code == 201, created.text
    tunnel: dict[str, str] = created.json()
    return tunnel


def _deferred_url(cp: ControlPlaneProcess, tunnel: dict[str, str]) -> str:
    return cp.url.replace("http://", "ws://") + tunnel["streams_url"] + "?defer=1"


def _streams(cp: ControlPlaneProcess, key: str, tunnel: dict[str, str]) -> int:
    with cp.client(key) as client:
        return int(client.get(f"/api/tunnels/{tunnel['id']}/").json()["streams"])


async def _closed_with(ws: ClientConnection) -> tuple[int | None, dict[str, str]]:
    """Wait for the close; its code and, for a refusal (4403), its JSON reason."""
    async with asyncio.timeout(20):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
    reason = json.loads(ws.close_reason) if ws.close_code == 4403 and ws.close_reason else {}
    return ws.close_code, reason


async def test_a_deferred_stream_opens_only_with_its_open_frame(tstack: TunnelStack) -> None:
    cp, key = tstack.cp, tstack.cp.admin_token
    async with echo_server() as port:
        tunnel = _create(cp, key, tstack.server, port)
        async with connect(
            _deferred_url(cp, tunnel), additional_headers=cp.auth_headers(key)
        ) as ws:
            # Accepted, but no stream yet: nothing registered, nothing asked of the agent.
            assert _streams(cp, key, tunnel) == 0
            await ws.send(OPEN_FRAME)
            await ws.send(b"deferred")
            echoed = b""
            while len(echoed) < len(b"deferred"):  # TCP may split it
                echoed += await ws.recv(decode=False)
            assert echoed == b"deferred"
            assert _streams(cp, key, tunnel) == 1


async def test_a_deferred_stream_is_checked_when_it_opens(tstack: TunnelStack) -> None:
    """The tunnel closed while the websocket waited: the open is refused (4403)."""
    cp, key = tstack.cp, tstack.cp.admin_token
    async with echo_server() as port:
        tunnel = _create(cp, key, tstack.server, port)
        async with connect(
            _deferred_url(cp, tunnel), additional_headers=cp.auth_headers(key)
        ) as ws:
            with cp.client(key) as client:
                assert client.delete(f"/api/tunnels/{tunnel['id']}/").status_code == 204
            await ws.send(OPEN_FRAME)
            code, reason = await _closed_with(ws)
    assert code == 4403
    assert reason["code"] == "TUNNEL_CLOSED"


async def test_a_deferred_stream_needs_its_token_still_valid(tstack: TunnelStack) -> None:
    cp = tstack.cp
    _, _, login = new_login(cp, superuser=True)
    with cp.client(login) as client:
        made = client.post("/api/auth/tokens/", json={"name": "deferred"})
        assert made.status_code == 201, made.text
    token_id, key = made.json()["id"], made.json()["key"]
    async with echo_server() as port:
        tunnel = _create(cp, key, tstack.server, port)
        async with connect(
            _deferred_url(cp, tunnel), additional_headers=cp.auth_headers(key)
        ) as ws:
            with cp.client(login) as client:
                assert client.delete(f"/api/auth/tokens/{token_id}/").status_code == 204
            await ws.send(OPEN_FRAME)
            code, reason = await _closed_with(ws)
    assert code == 4403
    assert reason["code"] == "AUTHENTICATION_FAILED"


async def test_a_deferred_stream_takes_only_an_open_frame_first(tstack: TunnelStack) -> None:
    cp, key = tstack.cp, tstack.cp.admin_token
    async with echo_server() as port:
        tunnel = _create(cp, key, tstack.server, port)
        for first in (b"data before open", '{"type":"eof"}'):
            url = _deferred_url(cp, tunnel)
            async with connect(url, additional_headers=cp.auth_headers(key)) as ws:
                await ws.send(first)
                code, _ = await _closed_with(ws)
                assert code == 4400
        assert _streams(cp, key, tunnel) == 0


async def test_an_unknown_tunnel_is_refused_at_the_handshake(tstack: TunnelStack) -> None:
    cp, key = tstack.cp, tstack.cp.admin_token
    unknown = {"streams_url": "/ws/tunnels/00000000-0000-4000-8000-000000000000/streams/"}
    with pytest.raises(InvalidStatus) as refused:
        await connect(_deferred_url(cp, unknown), additional_headers=cp.auth_headers(key))
    assert refused.value.response.status_code == 404
    assert json.loads(refused.value.response.body or b"")["code"] == "TUNNEL_NOT_FOUND"


async def test_waiting_deferred_streams_are_bounded_per_token(tstack: TunnelStack) -> None:
    """One token keeps at most 16 waiting (agentctl keeps 2 per tunnel); beyond, the
    handshake is refused with 503 and agentctl opens its stream the classic way."""
    cp, key = tstack.cp, tstack.cp.admin_token
    async with echo_server() as port:
        tunnel = _create(cp, key, tstack.server, port)
        url, headers = _deferred_url(cp, tunnel), cp.auth_headers(key)
        waiting = [await connect(url, additional_headers=headers) for _ in range(16)]
        try:
            with pytest.raises(InvalidStatus) as refused:
                await connect(url, additional_headers=headers)
            assert refused.value.response.status_code == 503
            assert json.loads(refused.value.response.body or b"")["code"] == "busy"
            await waiting.pop().close()

            async def one_more() -> bool:
                try:
                    waiting.append(await connect(url, additional_headers=headers))
                except InvalidStatus:
                    return False
                return True

            await eventually(one_more, what="a freed place")
        finally:
            for ws in waiting:
                await ws.close()
