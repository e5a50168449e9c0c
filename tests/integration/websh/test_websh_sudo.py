"""Sudo inside a websh terminal: the shell's process session is registered with the
agent's sudo mediation, so the work session's patterns decide (the acceptance story:
an allowed pattern runs, anything else is refused by the agent)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from tests.support.accounts import new_login
from tests.support.agent import AgentProcess, running_agent
from tests.support.controlplane import ControlPlaneProcess, running_control_plane
from tests.support.sudo import installed_sudo_plugin, require_sudo, sudo_session_user
from tests.support.users import CreatedUser
from tests.support.websh import TerminalReader, ws_source


pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

GROUP = "fleettest-wsudo"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ControlPlaneProcess, AgentProcess, CreatedUser]]:
    require_sudo()
    root = tmp_path_factory.mktemp("websh-sudo")
    with (
        running_control_plane(root / "cp") as cp,
        running_agent(cp, root / "agent", sections={"sudo": {"group": GROUP}}) as agent,
        installed_sudo_plugin(agent.config_path, root / "plugin"),
        sudo_session_user(GROUP) as user,
    ):
        yield cp, agent, user


async def test_sudo_in_a_terminal_follows_the_session_patterns(
    stack: tuple[ControlPlaneProcess, AgentProcess, CreatedUser],
) -> None:
    cp, agent, user = stack
    _, _, token = new_login(cp, superuser=True)
    with cp.client(token) as client:
        session = client.post(
            "/api/work-sessions/sessions/",
            json={
                "description": "websh sudo",
                "servers": [agent.name],
                "scopes": ["websh", "sudo"],
                "duration": "1h",
                "sudo_policies": [{"commands": ["id -u"]}],
            },
        ).json()
        assert session["status"] == "active", session
        terminal = client.post(
            "/api/websh/terminals/",
            json={"server": agent.name, "username": user.name, "work_session": session["id"]},
        ).json()
    url = cp.url.replace("http://", "ws://") + f"/ws/websh/{terminal['id']}/"
    async with connect(url, additional_headers=cp.auth_headers(token)) as ws:
        closed: list[tuple[int, str]] = []
        reader = TerminalReader(ws_source(ws, closed))
        await reader.control("ready")
        await ws.send(b"echo R''=$(sudo -n id -u)\n")
        assert (await reader.expect(r"R=(\d+)\r\n")).group(1) == "0"
        await ws.send(b"sudo -n whoami\n")
        refusal = await reader.expect(r"refused by the fleet agent \((\w+)\)")
        assert refusal.group(1) == "sudo_pattern_not_allowed"
        await ws.send(json.dumps({"type": "close"}))
        await reader.control("exit")
