"""The agent's list of control-plane URLs: when the one it is on dies it rotates to the
next within its reconnect backoff, and work submitted there reaches it.

The two control planes here are independent processes, each on its own copy of one
SQLite database (made by the first, copied while it is stopped): the same server id,
key and signing key on both, as two replicas would share them. This tests the agent's
side of failover alone; replicas on one PostgreSQL are tested elsewhere.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.e2e.commands import run_command
from tests.support.agent import AgentProcess, start_agent
from tests.support.controlplane import REPO_ROOT, ControlPlaneProcess, start_control_plane


pytestmark = pytest.mark.timeout(90)


def _twin(cp: ControlPlaneProcess, workdir: Path) -> ControlPlaneProcess:
    """A second control plane on a copy of ``cp``'s (stopped) directory."""
    shutil.copytree(
        cp.workdir, workdir, ignore=shutil.ignore_patterns("controlplane.log", "*.port")
    )
    twin = ControlPlaneProcess(
        workdir, workdir / cp.db_path.name, cp.admin_token, cp._env, tls=cp.tls
    )
    twin.signing_public_key = cp.signing_public_key
    twin.ssh_ca_public_key = cp.ssh_ca_public_key
    twin.start(0)
    return twin


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ControlPlaneProcess, ControlPlaneProcess, AgentProcess]]:
    a = start_control_plane(tmp_path / "a")
    agent = None
    b = None
    try:
        # Register (agent not started yet), then copy the database for the twin.
        agent = start_agent(a, tmp_path / "agent", name="rot-01", wait=False)
        agent.stop()
        a.stop()
        b = _twin(a, tmp_path / "b")
        a.start(0)
        # Rewrite the agent's URLs now that both ports are known: a first, then b.
        config = agent.config_path.read_text(encoding="utf-8").splitlines()
        config = [line for line in config if not line.startswith(("url =", "urls ="))]
        at = config.index("[control_plane]") + 1
        config[at:at] = [f'urls = ["{a.url}", "{b.url}"]']
        agent.config_path.write_text("\n".join(config) + "\n", encoding="utf-8")
        agent.start()
        yield a, b, agent
    finally:
        if agent is not None:
            agent.stop()
        for cp in (a, b):
            if cp is not None:
                cp.stop()


def test_agent_moves_to_the_next_url_when_its_control_plane_dies(
    pair: tuple[ControlPlaneProcess, ControlPlaneProcess, AgentProcess],
) -> None:
    a, b, agent = pair
    with a.client() as api:
        assert run_command(api, "rot-01", "echo on-a")["result"] == "on-a\n"
    with b.client() as api:
        assert api.get(f"/api/servers/servers/{agent.server_id}/").json()["is_connected"] is False

    a.kill()  # SIGKILL: no close frame, the agent sees the link drop
    killed = time.monotonic()
    agent.cp = b
    agent.wait_connected(timeout=30)
    # The test's backoff is at most 0.5 s per attempt; a handful of attempts suffice.
    assert time.monotonic() - killed < 15, agent.log_tail()
    with b.client() as api:
        assert run_command(api, "rot-01", "echo on-b")["result"] == "on-b\n"
    log = agent.log_path.read_text(encoding="utf-8")
    assert f'"url": "{b.url}"' in log, log[-4000:]
    status = subprocess.run(
        [sys.executable, "-m", "fleetgate.agent", "status", "--config", str(agent.config_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert re.search(rf"control plane:\s+{re.escape(b.url)}", status.stdout), status.stdout


def test_agent_skips_a_dead_first_url_at_start(tmp_path: Path) -> None:
    """The first URL refuses connections from the start: the agent gets to the second."""
    b = start_control_plane(tmp_path / "b")
    try:
        with socket_closed_port() as dead:
            agent = start_agent(b, tmp_path / "agent", url=f"http://127.0.0.1:{dead}", urls=[b.url])
            try:
                with b.client() as api:
                    assert run_command(api, agent.name, "echo second")["result"] == "second\n"
            finally:
                agent.stop()
    finally:
        b.stop()


@contextmanager
def socket_closed_port() -> Iterator[int]:
    """A loopback port with nothing listening (bound, not listening: connections are
    refused) for the duration of the block."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port
