"""Fixtures: a scripted control plane and an in-process agent daemon dialling it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from fleetgate.agent.config import AgentConfig, parse
from fleetgate.agent.daemon import lifecycle
from tests.support.fake_cp import ScriptedControlPlane, scripted_control_plane


MakeAgent = Callable[..., Coroutine[Any, Any, "RunningAgent"]]


class RunningAgent:
    """An agent daemon running as a task of the test's event loop."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] = asyncio.create_task(lifecycle.run(config, stop=self.stop))

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Ask for a graceful stop and wait for the daemon to return."""
        self.stop.set()
        async with asyncio.timeout(timeout):
            await self.task


@pytest.fixture
async def scripted_cp() -> AsyncIterator[ScriptedControlPlane]:
    async with scripted_control_plane() as cp:
        yield cp


def agent_config(
    cp: ScriptedControlPlane, tmp_path: Path, **sections: dict[str, Any]
) -> AgentConfig:
    key_file = tmp_path / "server.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(cp.key)
    raw: dict[str, Any] = {
        "control_plane": {"url": cp.url},
        "identity": {"server_id": str(cp.server_id), "key_file": str(key_file)},
        "state_dir": str(tmp_path / "state"),
        "runtime_dir": str(tmp_path / "run"),
        "logs_dir": str(tmp_path / "logs"),
        "backhaul": {"reconnect_min_delay": 0.02, "reconnect_max_delay": 0.2, "stable_after": 60},
        "limits": {"shutdown_grace": 5},
        # The scripted control plane sends unsigned commands unless a test pins a key.
        "grants": {"allow_unsigned": True},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse(raw)


@pytest.fixture
async def make_agent(scripted_cp: ScriptedControlPlane, tmp_path: Path) -> AsyncIterator[MakeAgent]:
    agents: list[RunningAgent] = []

    async def make(**sections: dict[str, Any]) -> RunningAgent:
        agent = RunningAgent(agent_config(scripted_cp, tmp_path, **sections))
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        if not agent.task.done():
            agent.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await agent.task
