"""The agent as a service: sd_notify from a real agent, ``fleetgate-agent status``, the audit log.

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
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.e2e.commands import run_command
from tests.support.agent import AgentProcess, start_agent
from tests.support.controlplane import REPO_ROOT, ControlPlaneProcess, running_control_plane


class NotifyListener:
    """systemd's side of ``NOTIFY_SOCKET``: collects the agent's datagrams in order.

    A thread reads continuously, as systemd does: the kernel queues only a few datagrams
    per Unix socket (``net.unix.max_dgram_qlen``, often 10) and drops the sender's beyond.
    """

    def __init__(self) -> None:
        self.name = f"fleetgate-agent-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name.encode())
        self.messages: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            with self._changed:
                self.messages.append(data.decode())
                self._changed.notify_all()

    def until(self, text: str, *, after: int = 0, count: int = 1, timeout: float = 20.0) -> int:
        """Wait until ``count`` messages from index ``after`` on contain ``text``.

        Returns the index of the first such message.
        """

        def found() -> bool:
            return sum(text in m for m in self.messages[after:]) >= count

        with self._changed:
            if not self._changed.wait_for(found, timeout):
                raise TimeoutError(f"no {count} x {text!r} in {self.messages}")
            return next(i for i, m in enumerate(self.messages) if i >= after and text in m)

    def mark(self, text: str) -> int:
        """Send ``text`` to ourselves; return its index once read (all before it are read)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(text.encode(), b"\0" + self.name.encode())
        return self.until(text)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(5)


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    with running_control_plane(tmp_path / "cp") as cp:
        yield cp


def agent_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetgate.agent", *args],
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
        ready_at = listener.until("READY=1")
        assert f"STATUS=connected to {cp.url}" in listener.messages[ready_at]
        # Watchdog pings keep coming after readiness.
        listener.until("WATCHDOG=1", after=ready_at, count=2)

        # fleetgate-agent status, read over the root-only socket of the running daemon.
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
        assert snapshot["unconfirmed_reports"] == 0  # nothing ran yet: nothing to confirm
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
        stopping_at = listener.until("STOPPING=1", timeout=5)
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
        listener.close()


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
        # A marker after everything the first run sent (it has exited; the socket is FIFO).
        first_run = listener.mark("TEST=first run over") + 1
        agent.start(wait=False)
        ready_at = listener.until("READY=1", after=first_run)
        assert f"STATUS=reconnecting to {cp.url}" in listener.messages[ready_at]
        cp.start(port)
        listener.until(f"STATUS=connected to {cp.url}", after=ready_at)
        agent.wait_connected()
        # Readiness is announced once per run.
        assert sum("READY=1" in m for m in listener.messages[first_run:]) == 1
    finally:
        agent.stop()
        listener.close()
