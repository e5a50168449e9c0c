"""A work session that ends while its agent is away still stops the agent's commands.

The control plane cannot tell an agent whose link is down (``work_session.ended`` goes only
to connected agents). When that agent says ``hello`` again with the session's command among
those it is running, the control plane sends the end again: the command stops at once
instead of running until its timeout. Real control plane and agent, a real user, a proxy
that cuts the link.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.accounts import new_login
from tests.support.agent import start_agent
from tests.support.controlplane import ControlPlaneProcess, running_control_plane
from tests.support.proxy import running_proxy
from tests.support.users import CreatedUser, temporary_user


pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]

SESSIONS = "/api/work-sessions/sessions/"
COMMANDS = "/api/events/commands/"


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    with running_control_plane(tmp_path / "cp") as running:
        yield running


@pytest.fixture
def user() -> Iterator[CreatedUser]:
    with temporary_user() as created:
        yield created


def _approved_session(cp: ControlPlaneProcess, token: str, server: str) -> str:
    body = {"description": "away", "servers": [server], "scopes": ["command"], "duration": "1h"}
    with cp.client(token) as client:
        created = client.post(SESSIONS, json=body)
    assert created.status_code == 201, created.text
    session = str(created.json()["id"])
    if created.json()["status"] != "active":
        with cp.client() as admin:
            approved = admin.post(f"{SESSIONS}{session}/approve/", json={})
        assert approved.status_code == 200, approved.text
    return session


async def _next_event(lines: Any) -> dict[str, Any]:
    async for line in lines:
        if line:
            event: dict[str, Any] = json.loads(line)
            return event
    raise AssertionError("the command's stream ended early")


async def test_a_session_ended_while_the_agent_was_away_stops_its_command_on_return(
    cp: ControlPlaneProcess, user: CreatedUser, tmp_path: Path
) -> None:
    sections = {"backhaul": {"reconnect_min_delay": 0.1, "reconnect_max_delay": 0.5}}
    with running_proxy(cp.port) as proxy:
        agent = start_agent(
            cp, tmp_path / "away", url=f"http://127.0.0.1:{proxy.port}", sections=sections
        )
        try:
            _, _, token = new_login(cp, server_username=user.name)
            session = _approved_session(cp, token, agent.name)
            body = {
                "server": agent.name,
                "line": "echo ready; sleep 1000; echo never",
                "shell": "system",
                "username": user.name,
                "work_session": session,
                "timeout": 600,
            }
            headers = cp.auth_headers(token)
            async with (
                httpx.AsyncClient(base_url=cp.url, headers=headers, timeout=60) as client,
                client.stream("POST", f"{COMMANDS}?stream=true", json=body) as stream,
            ):
                assert stream.status_code == 201, await stream.aread()
                lines = stream.aiter_lines()
                created = await _next_event(lines)
                command_id = created["command"]["id"]
                output = await _next_event(lines)
                assert output == {"event": "output", "seq": output["seq"], "content": "ready\n"}

                proxy.set_mode("drop")  # the link is cut: the end cannot reach the agent
                await asyncio.to_thread(agent.wait_connected, False)
                with cp.client() as admin:  # a superuser revokes
                    revoked = admin.post(f"{SESSIONS}{session}/revoke/", json={})
                    assert revoked.status_code == 200, revoked.text
                    row = admin.get(f"{COMMANDS}{command_id}/")
                assert row.json()["handled_at"] is None, row.text  # the agent is away

                proxy.set_mode("pass")
                finished = await _next_event(lines)
            assert finished["event"] == "finished", finished
            command = finished["command"]
            assert (command["error_phase"], command["error_code"]) == (
                "stopped",
                "work_session_ended",
            ), command
            assert command["exit_code"] == 128 + 15
            assert command["status"]["text"] == "Stopped"
            assert "never" not in command["result"]
        finally:
            agent.stop()
