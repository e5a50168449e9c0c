"""One control plane and three real agents (two labelled ``role=web``, one ``role=db``)
shared by the fan-out tests; each test uses its own command lines and work sessions."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.agent import AgentProcess, start_agent
from tests.support.controlplane import ControlPlaneProcess, running_control_plane
from tests.support.database import backend


__all__ = ["backend"]  # every fan-out test runs on SQLite and on PostgreSQL


WEB = ("web-01", "web-02")
DB = "db-01"


@dataclass
class Fleet:
    """The shared control plane and its agents, by server name."""

    cp: ControlPlaneProcess
    agents: dict[str, AgentProcess]
    agentctl_env: dict[str, str]

    def fanout(self, fanout_id: str, token: str | None = None) -> dict[str, Any]:
        """The fan-out object from the API."""
        with self.cp.client(token) as client:
            response = client.get(f"/api/events/fanouts/{fanout_id}/")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_done(self, fanout_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll the aggregated status until every server finished."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.fanout(fanout_id)
            if status["done"]:
                return status
            assert time.monotonic() < deadline, f"fan-out not done: {status}"
            time.sleep(0.05)

    def command_count(self) -> int:
        """How many commands the control plane holds."""
        with self.cp.client() as client:
            response = client.get("/api/events/commands/", params={"page_size": 1})
        assert response.status_code == 200, response.text
        return int(response.json()["count"])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[Fleet]:
    """A control plane with agents web-01, web-02 (role=web) and db-01 (role=db)."""
    root = tmp_path_factory.mktemp("fanout")
    with running_control_plane(root / "cp") as cp:
        agents: dict[str, AgentProcess] = {}
        try:
            for name in (*WEB, DB):
                role = "db" if name == DB else "web"
                agents[name] = start_agent(
                    cp, root / name, name=name, sections={"labels": {"role": role}}, wait=False
                )
            for agent in agents.values():
                agent.wait_connected()
            config = root / "agentctl.toml"
            config.write_text(f'url = "{cp.url}"\ntoken = "{cp.admin_token}"\n', encoding="utf-8")
            env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
            env.update({"AGENTCTL_CONFIG": str(config), "PYTHONUNBUFFERED": "1"})
            yield Fleet(cp, agents, env)
        finally:
            for agent in agents.values():
                agent.stop()
