"""Sudo inside a websh terminal: the shell's process session is registered with the
agent's sudo mediation, so the work session's patterns decide (the acceptance story:
an allowed pattern runs, anything else is refused by the agent)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.support.accounts import active_session, new_login
from tests.support.agent import AgentProcess, running_agent
from tests.support.controlplane import ControlPlaneProcess, running_control_plane
from tests.support.sudo import installed_sudo_plugin, require_sudo, sudo_session_user
from tests.support.users import CreatedUser, processes_gone
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
    stack: tuple[ControlPlaneProcess, AgentProcess, CreatedUser], tmp_path: Path
) -> None:
    cp, agent, user = stack
    _, _, token = new_login(cp, superuser=True)
    session = active_session(cp, token, server=agent.name, scopes=["websh", "sudo"], sudo=["id -u"])
    with cp.client(token) as client:
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
        victim = tmp_path / "victim"  # root's: only a refused `sudo rm` could remove it
        victim.write_text("keep")
        for line, code in refusals(str(victim)):
            await ws.send(line.encode() + b"\n")
            refusal = await reader.expect(r"refused by the fleet agent \((\w+)\)")
            assert refusal.group(1) == code, line
        assert victim.read_text() == "keep"  # nothing refused ran
        # Session end revokes everything at once: the terminal (and its process session,
        # with the sudo mediation's entry) ends as soon as the session is revoked.
        with cp.client() as admin:
            revoked = admin.post(f"/api/work-sessions/sessions/{session['id']}/revoke/")
            assert revoked.status_code == 200, revoked.text
        await reader.until_closed(timeout=20)
    assert closed, "the terminal did not close"
    assert closed[0][0] in (1000, 4403), closed
    # The client is told at once; the agent ends the shell within its hangup grace.
    assert await asyncio.to_thread(processes_gone, user.uid, 20)


def refusals(victim: str) -> list[tuple[str, str]]:
    """Each sudo the issue lists, typed at the prompt, and the agent's refusal code."""
    not_allowed = "sudo_pattern_not_allowed"
    return [
        ("sudo -n whoami", not_allowed),  # another command
        ("sudo -n id -u root", not_allowed),  # an extra argument
        (f"sudo -n sh -c 'rm -f {victim}'", not_allowed),
        (f"sudo -n env rm -f {victim}", not_allowed),
        (f"sudo -n /usr/bin/../bin/rm -f {victim}", not_allowed),
        ("sudo -n id -u ';' reboot", not_allowed),  # shell syntax as an argument
        ("sudo -n -s", "sudo_shell_not_allowed"),
        ("sudo -n -i", "sudo_shell_not_allowed"),
        ("sudo -n -u nobody id -u", "sudo_runas_not_allowed"),
    ]
