"""The agent as a service: sd_notify from a real agent, ``agent status``, the audit log.

A real control plane and a real agent subprocess; the test binds the datagram socket the
agent notifies (as systemd would) in the abstract namespace.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.e2e.commands import run_command
from tests.support.agent import AgentProcess, start_agent
from tests.support.controlplane import REPO_ROOT, ControlPlaneProcess, running_control_plane


class NotifyListener:
    """systemd's side of ``NOTIFY_SOCKET``: collects the agent's datagrams in order."""

    def __init__(self) -> None:
        self.name = f"fleet-agent-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name.encode())
        self.messages: list[str] = []

    def until(self, predicate_text: str, timeout: float = 20.0) -> list[str]:
        """Receive until a message containing ``predicate_text`` arrives; return all so far."""
        deadline = time.monotonic() + timeout
        while not any(predicate_text in m for m in self.messages):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {predicate_text!r} in {self.messages}")
            self.sock.settimeout(remaining)
            self.messages.append(self.sock.recv(4096).decode())
        return self.messages

    def count(self, text: str) -> int:
        return sum(text in m for m in self.messages)


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    with running_control_plane(tmp_path / "cp") as cp:
        yield cp


def agent_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_notify_status_and_audit_from_a_real_agent(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    listener = NotifyListener()
    agent: AgentProcess | None = None
    try:
        agent = start_agent(
            cp,
            tmp_path / "a",
            # A watchdog of 0.4 s: pings every 0.2 s.
            env={"NOTIFY_SOCKET": f"@{listener.name}", "WATCHDOG_USEC": "400000"},
        )
        listener.until("READY=1")
        ready_at = next(i for i, m in enumerate(listener.messages) if "READY=1" in m)
        assert f"STATUS=connected to {cp.url}" in listener.messages[ready_at]
        # Watchdog pings keep coming after readiness.
        deadline = time.monotonic() + 20
        while listener.messages[ready_at:].count("WATCHDOG=1") < 2:
            assert time.monotonic() < deadline, listener.messages
            listener.sock.settimeout(deadline - time.monotonic())
            listener.messages.append(listener.sock.recv(4096).decode())

        # agent status, read over the root-only socket of the running daemon.
        sock_path = agent.runtime_dir / "status.sock"
        assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(agent.runtime_dir.stat().st_mode) == 0o700
        shown = agent_cli("status", "--config", str(agent.config_path))
        assert shown.returncode == 0, shown.stderr
        assert "connected since" in shown.stdout
        assert cp.url in shown.stdout
        raw = agent_cli("status", "--json", "--config", str(agent.config_path))
        snapshot = json.loads(raw.stdout)
        assert snapshot["connection"]["status"] == "connected"
        assert snapshot["server_id"] == agent.server_id
        assert snapshot["control_plane"] == cp.url
        assert snapshot["unconfirmed_reports"] >= 0
        assert snapshot["active_commands"] == 0
        assert snapshot["uptime"] > 0

        # Every command leaves received/started/finished in the audit log (0600).
        with cp.client(timeout=60) as api:
            command = run_command(api, agent.name, "exit 3")
        assert command["exit_code"] == 3
        audit_path = agent.logs_dir / "audit.log"
        assert stat.S_IMODE(audit_path.stat().st_mode) == 0o600
        entries = [json.loads(x) for x in audit_path.read_text().splitlines()]
        mine = [e for e in entries if e["command_id"] == command["id"]]
        assert [e["event"] for e in mine] == [
            "command.received",
            "command.started",
            "command.finished",
        ]
        assert mine[0]["line"] == "exit 3"
        assert {e["user"] for e in mine} == {"root"}
        assert mine[2]["exit_code"] == 3

        assert agent.stop() == 0
        listener.until("STOPPING=1", timeout=5)
        stopping_at = next(i for i, m in enumerate(listener.messages) if "STOPPING=1" in m)
        assert ready_at < stopping_at
        assert listener.messages[ready_at:stopping_at].count("WATCHDOG=1") >= 2
        assert not sock_path.exists()  # the status socket is removed on a clean stop

        # Without a daemon, status says so with EX_UNAVAILABLE.
        gone = agent_cli("status", "--config", str(agent.config_path))
        assert gone.returncode == 69
        assert "no agent answers" in gone.stderr

        # No secret in any log line: the server key and the admin token.
        key = (agent.workdir / "server.key").read_text().strip()
        logs = agent.log_path.read_text() + cp.log_path.read_text() + audit_path.read_text()
        assert key not in logs
        assert cp.admin_token not in logs
    finally:
        if agent is not None:
            agent.stop()
        listener.sock.close()


def test_a_second_agent_on_the_same_runtime_dir_is_refused(
    cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    agent = start_agent(cp, tmp_path / "a")
    try:
        twin = AgentProcess(cp, agent.workdir, agent.name, agent.server_id, agent.config_path)
        twin.log_path = agent.workdir / "twin.log"
        twin.start(wait=False)
        assert twin.process is not None
        assert twin.process.wait(30) == 73
        assert "another agent is running" in twin.log_path.read_text()
        # The first one still serves its status.
        assert agent_cli("status", "--config", str(agent.config_path)).returncode == 0
    finally:
        agent.stop()
    assert os.path.exists(agent.runtime_dir)


def test_ready_while_the_control_plane_is_down_then_connected_status(
    cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    """READY=1 comes once the agent is retrying: systemd must not wait for the control plane."""
    listener = NotifyListener()
    agent = start_agent(cp, tmp_path / "a", wait=False, env={"NOTIFY_SOCKET": f"@{listener.name}"})
    try:
        agent.stop()  # registered above; now start it again with the control plane down
        port = cp.port
        cp.stop()
        # Forget what the first run sent (it has exited: its datagrams are all queued).
        listener.sock.setblocking(False)
        while True:
            try:
                listener.sock.recv(4096)
            except BlockingIOError:
                break
        listener.sock.setblocking(True)
        agent.start(wait=False)
        listener.until("READY=1")
        ready = next(m for m in listener.messages if "READY=1" in m)
        assert f"STATUS=reconnecting to {cp.url}" in ready
        cp.start(port)
        listener.until(f"STATUS=connected to {cp.url}")
        agent.wait_connected()
        assert listener.count("READY=1") == 1  # readiness is announced once
    finally:
        agent.stop()
        listener.sock.close()
