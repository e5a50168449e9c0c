"""A control plane and an agent that allows tunnels, plus agentctl configured for them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess, running_agent
from tests.support.agentctl import AgentctlRunner
from tests.support.controlplane import ControlPlaneProcess, running_control_plane


ALLOWED = "1024-65535"
"""Ports the test agent allows (every ephemeral port a test target may get)."""
REFUSED_PORT = 1000


@dataclass
class TunnelStack:
    cp: ControlPlaneProcess
    agent: AgentProcess
    cli: AgentctlRunner

    @property
    def server(self) -> str:
        return self.agent.name


@pytest.fixture(scope="module")
def tstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelStack]:
    root: Path = tmp_path_factory.mktemp("tunnel")
    with (
        running_control_plane(root / "cp") as cp,
        running_agent(
            cp,
            root / "agent",
            sections={
                "tunnel": {
                    "enabled": True,
                    "allowed_ports": [ALLOWED],
                    "max_streams_per_tunnel": 256,
                    "max_streams": 512,
                }
            },
        ) as agent,
    ):
        config = root / "agentctl.toml"
        config.write_text(f'url = "{cp.url}"\ntoken = "{cp.admin_token}"\n', encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
        env.update({"AGENTCTL_CONFIG": str(config), "PYTHONUNBUFFERED": "1"})
        yield TunnelStack(cp, agent, AgentctlRunner(cp, env))
