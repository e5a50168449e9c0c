"""Revocation reaches open tunnels: deleting the API token that opened a tunnel ends its
streams at once with close 4403 ``token_revoked``, and closes the tunnel."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.integration.tunnel.conftest import TunnelStack
from tests.support.accounts import new_login
from tests.support.tunnel import echo_server


async def until_closed(ws: ClientConnection) -> None:
    """Read (and drop) frames until the connection closes, within 20 s."""
    async with asyncio.timeout(20):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            return


pytestmark = pytest.mark.timeout(60)


async def test_deleting_the_token_ends_its_tunnel_streams(tstack: TunnelStack) -> None:
    cp = tstack.cp
    _, _, login = new_login(cp, superuser=True)
    with cp.client(login) as client:
        made = client.post("/api/auth/tokens/", json={"name": "tunnel"})
        assert made.status_code == 201, made.text
    token_id, key = made.json()["id"], made.json()["key"]
    async with echo_server() as port:
        with cp.client(key) as client:
            created = client.post(
                "/api/tunnels/", json={"server": tstack.server, "remote_port": port}
            )
            assert created.status_code == 201, created.text
        tunnel = created.json()
        url = cp.url.replace("http://", "ws://") + tunnel["streams_url"]
        async with connect(url, additional_headers=cp.auth_headers(key)) as ws:
            await ws.send(b"before the revocation")
            echoed = b""
            while len(echoed) < len(b"before the revocation"):  # TCP may split it
                echoed += await ws.recv(decode=False)
            assert echoed == b"before the revocation"
            with cp.client(login) as client:
                deleted = client.delete(f"/api/auth/tokens/{token_id}/")
                assert deleted.status_code == 204, deleted.text
            await until_closed(ws)
            assert ws.close_code == 4403
            assert ws.close_reason is not None
            assert json.loads(ws.close_reason)["code"] == "token_revoked"
    with cp.client(login) as client:
        row = client.get(f"/api/tunnels/{tunnel['id']}/").json()
    assert row["closed_at"] is not None
    assert row["close_code"] == "token_revoked"
    assert row["streams"] == 0
