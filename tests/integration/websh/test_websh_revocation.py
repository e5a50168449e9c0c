"""Revocation reaches open terminals: ending a work session, deleting the token that opened
a terminal or disabling its user ends the terminal at once, attached (the client gets
close 4403 and the reason) or detached (the agent kills the shell instead of waiting for
the detach grace). Real control plane and agent subprocesses, real users and PTYs."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.support.accounts import new_login
from tests.support.agent import AgentProcess, running_agent, start_agent
from tests.support.controlplane import ControlPlaneProcess, running_control_plane
from tests.support.proxy import running_proxy
from tests.support.users import CreatedUser, temporary_user
from tests.support.websh import TerminalReader, ws_source


pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]

TERMINALS = "/api/websh/terminals/"
SESSIONS = "/api/work-sessions/sessions/"
DETACH_GRACE = 60.0
"""Long: a detached shell that ends within the test did not wait for its grace."""


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ControlPlaneProcess, AgentProcess]]:
    workdir: Path = tmp_path_factory.mktemp("websh-revoke")
    sections = {"websh": {"detach_grace": DETACH_GRACE, "hangup_grace": 1.0}}
    with (
        running_control_plane(workdir / "cp") as cp,
        running_agent(cp, workdir / "agent", sections=sections) as agent,
    ):
        yield cp, agent


@pytest.fixture
def user() -> Iterator[CreatedUser]:
    with temporary_user() as created:
        yield created


class Attached:
    """One client websocket on a terminal and what it received."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.closed: list[tuple[int, str]] = []
        self.reader = TerminalReader(ws_source(ws, self.closed))

    async def ask(self, line: str, pattern: str) -> str:
        await self.ws.send((line + "\n").encode())
        return (await self.reader.expect(pattern)).group(1)

    async def refusal(self) -> tuple[int, dict[str, Any]]:
        """Wait for the close; its code and the JSON reason."""
        await self.reader.until_closed(timeout=20)
        code, reason = self.closed[0]
        return code, json.loads(reason)


@asynccontextmanager
async def attach(cp: ControlPlaneProcess, terminal_id: str, token: str) -> AsyncIterator[Attached]:
    url = cp.url.replace("http://", "ws://") + f"/ws/websh/{terminal_id}/"
    async with connect(url, additional_headers=cp.auth_headers(token), max_size=None) as ws:
        yield Attached(ws)


def approved_session(cp: ControlPlaneProcess, token: str, server: str) -> str:
    """A ``websh`` work session requested by ``token``'s user and approved by the admin."""
    body = {"description": "revocation test", "servers": [server], "scopes": ["websh"]}
    with cp.client(token) as client:
        created = client.post(SESSIONS, json={**body, "duration": "1h"})
    assert created.status_code == 201, created.text
    session = created.json()
    if session["status"] != "active":
        with cp.client() as admin:
            approved = admin.post(f"{SESSIONS}{session['id']}/approve/", json={})
        assert approved.status_code == 200, approved.text
        assert approved.json()["status"] == "active", approved.text
    return str(session["id"])


def new_terminal(
    cp: ControlPlaneProcess, token: str, server: str, username: str, session: str | None = None
) -> str:
    body: dict[str, Any] = {"server": server, "username": username}
    if session is not None:
        body["work_session"] = session
    with cp.client(token) as client:
        created = client.post(TERMINALS, json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def api_token(cp: ControlPlaneProcess, login_token: str) -> tuple[str, str]:
    """``(token id, key)`` of an API token made by ``login_token``'s user."""
    with cp.client(login_token) as client:
        made = client.post("/api/auth/tokens/", json={"name": "revocation"})
    assert made.status_code == 201, made.text
    return str(made.json()["id"]), str(made.json()["key"])


def terminal_row(cp: ControlPlaneProcess, terminal_id: str) -> dict[str, Any]:
    with cp.client() as admin:
        found = admin.get(f"{TERMINALS}{terminal_id}/")
    assert found.status_code == 200, found.text
    return dict(found.json())


async def gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` is gone within ``timeout`` seconds (polled, not slept)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_revoking_the_session_ends_its_terminal_with_the_reason(
    stack: tuple[ControlPlaneProcess, AgentProcess], user: CreatedUser
) -> None:
    cp, agent = stack
    _, _, token = new_login(cp, server_username=user.name)  # gated; the admin approves
    session = approved_session(cp, token, agent.name)
    tid = new_terminal(cp, token, agent.name, user.name, session)
    async with attach(cp, tid, token) as terminal:
        await terminal.reader.control("ready")
        pid = int(await terminal.ask("echo P''=$$", r"P=(\d+)\r\n"))
        with cp.client() as admin:
            revoked = admin.post(f"{SESSIONS}{session}/revoke/", json={})
            assert revoked.status_code == 200, revoked.text
        code, reason = await terminal.refusal()
    assert code == 4403
    assert reason["code"] == "work_session_revoked"
    assert await gone(pid, 15), "the shell outlived its revoked session"
    assert terminal_row(cp, tid)["status"] == "closed"


async def test_a_detached_terminal_ends_when_its_session_is_revoked(
    stack: tuple[ControlPlaneProcess, AgentProcess], user: CreatedUser
) -> None:
    """No channel is attached: the agent is told by terminal id and ends the shell now,
    not when the detach grace (60 s) runs out."""
    cp, agent = stack
    _, _, token = new_login(cp, server_username=user.name)
    session = approved_session(cp, token, agent.name)
    tid = new_terminal(cp, token, agent.name, user.name, session)
    async with attach(cp, tid, token) as terminal:
        await terminal.reader.control("ready")
        pid = int(await terminal.ask("echo P''=$$", r"P=(\d+)\r\n"))
        terminal.ws.transport.abort()  # the client drops: the terminal only detaches
    assert not await gone(pid, 0.5), "the shell must survive a mere detach"
    with cp.client() as admin:
        revoked = admin.post(f"{SESSIONS}{session}/revoke/", json={})
        assert revoked.status_code == 200, revoked.text
    assert await gone(pid, 15), "the detached shell waited for its grace"
    row = terminal_row(cp, tid)
    assert row["status"] == "closed"
    assert row["close_reason"] == "work_session_revoked"


async def test_deleting_the_token_ends_the_terminal_it_opened(
    stack: tuple[ControlPlaneProcess, AgentProcess], user: CreatedUser
) -> None:
    cp, agent = stack
    _, _, login = new_login(cp, superuser=True)
    token_id, key = api_token(cp, login)
    tid = new_terminal(cp, key, agent.name, user.name)
    async with attach(cp, tid, key) as terminal:
        await terminal.reader.control("ready")
        pid = int(await terminal.ask("echo P''=$$", r"P=(\d+)\r\n"))
        with cp.client(login) as client:
            deleted = client.delete(f"/api/auth/tokens/{token_id}/")
            assert deleted.status_code == 204, deleted.text
        code, reason = await terminal.refusal()
    assert (code, reason["code"]) == (4403, "token_revoked")
    assert await gone(pid, 15)
    with cp.client(key) as client:
        assert client.get("/api/auth/whoami/").status_code == 401


async def test_disabling_a_user_ends_their_terminal_and_their_tokens(
    stack: tuple[ControlPlaneProcess, AgentProcess], user: CreatedUser
) -> None:
    cp, agent = stack
    user_id, username, token = new_login(cp, server_username=user.name)
    session = approved_session(cp, token, agent.name)
    tid = new_terminal(cp, token, agent.name, user.name, session)
    async with attach(cp, tid, token) as terminal:
        await terminal.reader.control("ready")
        pid = int(await terminal.ask("echo P''=$$", r"P=(\d+)\r\n"))
        with cp.client() as admin:
            disabled = admin.patch(f"/api/iam/users/{user_id}/", json={"is_active": False})
            assert disabled.status_code == 200, disabled.text
            assert disabled.json()["is_active"] is False
        code, reason = await terminal.refusal()
    assert (code, reason["code"]) == (4403, "user_disabled")
    assert await gone(pid, 15)
    with cp.client(token) as client:
        who = client.get("/api/auth/whoami/")
        assert who.status_code == 401, who.text
        again = client.post(TERMINALS, json={"server": agent.name, "username": user.name})
        assert again.status_code == 401
    with cp.client() as admin:
        listed = {u["username"]: u for u in admin.get("/api/iam/users/").json()}
        assert listed[username]["is_active"] is False
        enabled = admin.patch(f"/api/iam/users/{user_id}/", json={"is_active": True})
        assert enabled.status_code == 200, enabled.text
        assert enabled.json()["is_active"] is True
    with cp.client(token) as client:
        assert client.get("/api/auth/whoami/").status_code == 200
    # Enabled again, the user may open a terminal again (nothing remembers the revocation).
    again_id = new_terminal(cp, token, agent.name, user.name, session)
    async with attach(cp, again_id, token) as terminal:
        await terminal.reader.control("ready")
        assert await terminal.ask("echo B''=back", r"B=(\w+)\r\n") == "back"
        await terminal.ws.send(b"exit\n")
        assert (await terminal.reader.control("exit"))["reason"] == "exited"


async def test_delete_ends_an_attached_and_a_detached_terminal(
    stack: tuple[ControlPlaneProcess, AgentProcess], user: CreatedUser
) -> None:
    cp, agent = stack
    attached_id = new_terminal(cp, cp.admin_token, agent.name, user.name)
    detached_id = new_terminal(cp, cp.admin_token, agent.name, user.name)
    async with attach(cp, detached_id, cp.admin_token) as terminal:
        await terminal.reader.control("ready")
        detached_pid = int(await terminal.ask("echo P''=$$", r"P=(\d+)\r\n"))
        terminal.ws.transport.abort()
    async with attach(cp, attached_id, cp.admin_token) as terminal:
        await terminal.reader.control("ready")
        attached_pid = int(await terminal.ask("echo P''=$$", r"P=(\d+)\r\n"))
        with cp.client() as admin:
            for tid in (attached_id, detached_id):
                assert admin.delete(f"{TERMINALS}{tid}/").status_code == 204
        assert (await terminal.reader.control("exit", timeout=20))["reason"] == "closed"
        await terminal.reader.until_closed(timeout=20)
    assert await gone(attached_pid, 15)
    assert await gone(detached_pid, 15), "the detached shell waited for its grace"
    assert terminal_row(cp, detached_id)["close_reason"] == "closed by API"


async def test_a_terminal_revoked_while_its_agent_was_away_ends_when_it_returns(
    stack: tuple[ControlPlaneProcess, AgentProcess], user: CreatedUser, tmp_path: Path
) -> None:
    """The agent cannot be told while its link is down; the control plane tells it again
    (``terminal.end``) when it reconnects, instead of the shell waiting for its grace."""
    cp, _ = stack
    sections = {
        "websh": {"detach_grace": DETACH_GRACE, "hangup_grace": 1.0},
        "backhaul": {"reconnect_min_delay": 0.1, "reconnect_max_delay": 0.5},
    }
    with running_proxy(cp.port) as proxy:
        agent = start_agent(
            cp, tmp_path / "away", url=f"http://127.0.0.1:{proxy.port}", sections=sections
        )
        try:
            _, _, token = new_login(cp, server_username=user.name)
            session = approved_session(cp, token, agent.name)
            tid = new_terminal(cp, token, agent.name, user.name, session)
            async with attach(cp, tid, token) as terminal:
                await terminal.reader.control("ready")
                pid = int(await terminal.ask("echo P''=$$", r"P=(\d+)\r\n"))
                proxy.set_mode("drop")  # the backhaul and the channel are cut: it detaches
            await asyncio.to_thread(agent.wait_connected, False)
            with cp.client() as admin:
                revoked = admin.post(f"{SESSIONS}{session}/revoke/", json={})
                assert revoked.status_code == 200, revoked.text
            assert terminal_row(cp, tid)["status"] == "closed"
            assert not await gone(pid, 0.5), "nothing can reach the agent while it is away"
            proxy.set_mode("pass")
            assert await gone(pid, 20), "the returning agent was not told to end the shell"
        finally:
            agent.stop()
