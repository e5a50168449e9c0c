"""Sudo inside ``ssh host cmd``: the command's process session is registered with the
agent's sudo mediation like a websh shell's, so the work session's patterns decide."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.accounts import active_session, new_login
from tests.support.agent import AgentProcess, running_agent
from tests.support.agentctl import AgentctlRunner
from tests.support.controlplane import ControlPlaneProcess, running_control_plane
from tests.support.sudo import installed_sudo_plugin, require_sudo, sudo_session_user
from tests.support.users import CreatedUser


pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

GROUP = "fleettest-ssudo"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ControlPlaneProcess, AgentProcess, CreatedUser]]:
    require_sudo()
    root = tmp_path_factory.mktemp("ssh-sudo")
    with (
        running_control_plane(root / "cp") as cp,
        running_agent(cp, root / "agent", sections={"sudo": {"group": GROUP}}) as agent,
        installed_sudo_plugin(agent.config_path, root / "plugin"),
        sudo_session_user(GROUP) as user,
    ):
        yield cp, agent, user


def test_sudo_over_ssh_follows_the_session_patterns(
    stack: tuple[ControlPlaneProcess, AgentProcess, CreatedUser], tmp_path: Path
) -> None:
    cp, agent, user = stack
    _, _, token = new_login(cp, superuser=True)
    session = active_session(
        cp, token, server=agent.name, scopes=["command", "sudo"], sudo=["id -u"]
    )
    config = tmp_path / "agentctl.toml"
    config.write_text(f'url = "{cp.url}"\ntoken = "{token}"\n', encoding="utf-8")
    cli = AgentctlRunner(cp, {"AGENTCTL_CONFIG": str(config), "PATH": "/usr/bin:/bin"})
    ssh_config = tmp_path / "ssh_config"
    made = cli.run(
        *("ssh-config", "--work-session", session["id"], "--user", user.name),
        *("-o", str(ssh_config)),
    )
    assert made.returncode == 0, made.stderr

    def ssh(line: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-F", str(ssh_config), agent.name, line],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    allowed = ssh("sudo -n id -u")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == "0\n"
    victim = tmp_path / "victim"  # root's: only a refused `sudo rm` could remove it
    victim.write_text("keep")
    refused = ssh(f"sudo -n rm -f {victim}")
    assert refused.returncode != 0
    assert "refused by the fleet agent (sudo_pattern_not_allowed)" in refused.stderr
    assert victim.read_text() == "keep"
