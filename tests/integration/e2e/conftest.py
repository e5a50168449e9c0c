"""One real control plane and one real agent (subprocesses) shared by a module's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.agent import AgentProcess, running_agent
from tests.support.controlplane import ControlPlaneProcess, running_control_plane


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ControlPlaneProcess, AgentProcess]]:
    workdir: Path = tmp_path_factory.mktemp("e2e")
    with (
        running_control_plane(workdir / "cp") as cp,
        running_agent(
            cp,
            workdir / "agent",
            sections={"limits": {"kill_grace": 1.0, "max_concurrent_commands": 8}},
        ) as agent,
    ):
        yield cp, agent


@pytest.fixture
def api(stack: tuple[ControlPlaneProcess, AgentProcess]) -> Iterator[httpx.Client]:
    cp, _ = stack
    with cp.client(timeout=60) as client:
        yield client


@pytest.fixture
def server(stack: tuple[ControlPlaneProcess, AgentProcess]) -> str:
    return stack[1].name
