"""Revocation reaches transfers in flight: revoking the work session of an upload that is
half sent cuts it at once (close 4403 ``work_session_revoked``) and nothing is put in
place."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from urllib.parse import urlencode

import pytest
from conftest import SERVER, FilesStack  # type: ignore[import-not-found]
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.accounts import active_session, new_login
from tests.support.users import CreatedUser, processes_gone


async def until_closed(ws: ClientConnection) -> None:
    """Read (and drop) frames until the connection closes, within 20 s."""
    async with asyncio.timeout(20):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            return


pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

SIZE = 8 << 20


async def test_revoking_the_session_cuts_an_upload_in_flight(
    stack: FilesStack, area: Path, user: CreatedUser
) -> None:
    cp = stack.cp
    _, _, token = new_login(cp, superuser=True)  # gated; a superuser's session is active
    session = active_session(cp, token, server=SERVER, scopes=["webftp"])["id"]
    home = area / "home"
    home.mkdir()
    os.chown(home, user.uid, user.gid)
    target = home / "big.bin"
    query = urlencode(
        {
            "server": SERVER,
            "op": "upload",
            "path": str(target),
            "user": user.name,
            "size": SIZE,
            "work_session": session,
        }
    )
    url = cp.url.replace("http://", "ws://") + f"/ws/files/?{query}"
    async with connect(url, additional_headers=cp.auth_headers(token)) as ws:
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready", ready
        await ws.send(b"\0" * (1 << 20))  # one MiB of eight: the transfer is in flight
        with cp.client() as admin:
            revoked = admin.post(f"/api/work-sessions/sessions/{session}/revoke/", json={})
            assert revoked.status_code == 200, revoked.text
        await until_closed(ws)
        assert ws.close_code == 4403
        assert ws.close_reason is not None
        assert json.loads(ws.close_reason)["code"] == "work_session_revoked"
    gone = await asyncio.to_thread(processes_gone, user.uid, 15)
    assert gone, "the transfer's worker outlived the revocation"
    assert not target.exists()
