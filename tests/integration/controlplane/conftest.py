"""Fixtures: a real control plane subprocess shared by the module's tests, fresh servers.

Example for other test suites::

    from tests.support.controlplane import ControlPlaneProcess, Server, running_control_plane
from tests.support.database import backend


__all__ = ["admin", "backend", "control_plane", "control_plane_factory", "server"]

    @pytest.fixture
    def control_plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
        with running_control_plane(tmp_path / "cp") as cp:
            yield cp
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.support.controlplane import ControlPlaneProcess, Server, running_control_plane
from tests.support.database import backend


__all__ = ["admin", "backend", "control_plane", "control_plane_factory", "server"]


@pytest.fixture(scope="module")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory, backend: str
) -> Iterator[ControlPlaneProcess]:
    """One control plane per test module and backend (tests isolate themselves with fresh
    servers)."""
    with running_control_plane(tmp_path_factory.mktemp("controlplane")) as cp:
        yield cp


@pytest.fixture
def control_plane_factory(
    tmp_path: Path,
) -> Iterator[Callable[[dict[str, str]], ControlPlaneProcess]]:
    """Start dedicated control planes with extra environment (stopped at the end)."""
    with ExitStack() as stack:
        count = 0

        def start(env: dict[str, str]) -> ControlPlaneProcess:
            nonlocal count
            count += 1
            return stack.enter_context(running_control_plane(tmp_path / f"cp{count}", env=env))

        yield start


@pytest.fixture
def server(control_plane: ControlPlaneProcess) -> Server:
    """A new server with a unique name on the shared control plane."""
    name = f"srv-{uuid.uuid4().hex[:12]}"
    return control_plane.new_server(name)


@pytest.fixture
def admin(control_plane: ControlPlaneProcess) -> Iterator[httpx.Client]:
    """An httpx client authenticated as the superuser ``admin``."""
    with control_plane.client() as client:
        yield client
