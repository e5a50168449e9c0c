"""A control plane, an agent serving ssh channels, a real user, and OpenSSH configured by
``agentctl ssh-config`` for a work session with every SSH scope."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.accounts import active_session, new_login
from tests.support.agent import AgentProcess, running_agent
from tests.support.agentctl import AgentctlRunner
from tests.support.controlplane import ControlPlaneProcess, running_control_plane
from tests.support.users import CreatedUser, temporary_user


ALL_SCOPES = ("websh", "command", "webftp", "tunnel")
SSH_TIMEOUT = 60.0


@dataclass
class SshStack:
    cp: ControlPlaneProcess
    agent: AgentProcess
    user: CreatedUser
    token: str
    """A superuser's login token (its work sessions are active at once)."""
    root: Path

    @property
    def server(self) -> str:
        return self.agent.name

    def cli(self, name: str) -> AgentctlRunner:
        """agentctl with its own config directory (keys, certificates) under ``name``."""
        directory = self.root / name
        directory.mkdir(exist_ok=True)
        config = directory / "agentctl.toml"
        config.write_text(f'url = "{self.cp.url}"\ntoken = "{self.token}"\n', encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTCTL_", "SSH_"))}
        env.update({"AGENTCTL_CONFIG": str(config), "PYTHONUNBUFFERED": "1"})
        return AgentctlRunner(self.cp, env)

    def session(self, scopes: tuple[str, ...] = ALL_SCOPES, duration: str = "1h") -> str:
        return str(
            active_session(
                self.cp, self.token, server=self.server, scopes=scopes, duration=duration
            )["id"]
        )

    def configure(self, name: str, session: str, *extra: str) -> Path:
        """``agentctl ssh-config`` for ``session`` into a file; its path."""
        cli = self.cli(name)
        path = self.root / name / "ssh_config"
        result = cli.run(
            "ssh-config",
            "--work-session",
            session,
            "--user",
            self.user.name,
            "-o",
            str(path),
            *extra,
        )
        assert result.returncode == 0, result.stderr
        return path

    def events(
        self, session: str, until: Callable[[list[dict[str, Any]]], bool] = lambda _: True
    ) -> list[dict[str, Any]]:
        """The session's timeline, once ``until`` holds (the agent reports asynchronously)."""
        deadline = time.monotonic() + 20
        while True:
            with self.cp.client(self.token) as client:
                answer = client.get(
                    f"/api/work-sessions/sessions/{session}/timeline/", params={"page_size": 100}
                )
            assert answer.status_code == 200, answer.text
            events = list(answer.json()["results"])
            if until(events) or time.monotonic() > deadline:
                return events
            time.sleep(0.1)


def ssh(config: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run OpenSSH's ``ssh -F config`` to completion."""
    return subprocess.run(
        ["ssh", "-F", str(config), *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=SSH_TIMEOUT,
        check=False,
    )


@contextmanager
def forwarding(config: Path, *forward: str) -> Iterator[subprocess.Popen[bytes]]:
    """OpenSSH's ``ssh -N`` with ``forward`` (``-L``/``-R`` spec and host), ended on exit."""
    client = subprocess.Popen(
        ["ssh", "-F", str(config), "-N", "-o", "ExitOnForwardFailure=yes", *forward],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield client
    finally:
        client.terminate()
        client.wait(timeout=SSH_TIMEOUT)


@pytest.fixture(scope="package")
def sstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshStack]:
    for tool in ("ssh", "scp", "sftp", "rsync"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (make deps installs openssh-client and rsync)")
    root: Path = tmp_path_factory.mktemp("ssh")
    with (
        temporary_user() as user,
        running_control_plane(root / "cp") as cp,
        running_agent(
            cp,
            root / "agent",
            sections={"tunnel": {"enabled": True, "allowed_ports": ["1024-65535"]}},
        ) as agent,
    ):
        subprocess.run(["chsh", "-s", "/bin/bash", user.name], check=True, capture_output=True)
        _, _, token = new_login(cp, superuser=True)
        yield SshStack(cp, agent, user, token, root)
