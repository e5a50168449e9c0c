"""Fixtures of the file-transfer tests: a shared directory the test users can reach."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess, running_agent
from tests.support.agentctl import AgentctlRunner
from tests.support.controlplane import running_control_plane
from tests.support.users import CreatedUser, require_root, temporary_user


@pytest.fixture
def area() -> Iterator[Path]:
    """A world-writable sticky directory under /tmp (like /tmp itself), removed after."""
    require_root()
    path = Path(tempfile.mkdtemp(prefix="files-test-", dir="/tmp"))
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def user() -> Iterator[CreatedUser]:
    with temporary_user() as created:
        yield created


@pytest.fixture
def other_user() -> Iterator[CreatedUser]:
    with temporary_user() as created:
        yield created


@dataclass
class FilesStack(AgentctlRunner):
    """A control plane, a connected agent (server ``SERVER``) and agentctl for both."""

    agent: AgentProcess | None = None

    def cp_(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``agentctl cp ... --output json``."""
        return self.run("cp", *args, "--output", "json", env=env)


SERVER = "files-01"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilesStack]:
    root = tmp_path_factory.mktemp("files")
    with (
        running_control_plane(root / "cp") as cp,
        running_agent(cp, root / "agent", name=SERVER) as agent,
    ):
        config = root / "agentctl.toml"
        config.write_text(f'url = "{cp.url}"\ntoken = "{cp.admin_token}"\n', encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
        env.update({"AGENTCTL_CONFIG": str(config), "PYTHONUNBUFFERED": "1"})
        yield FilesStack(cp, env, agent)
