"""A tunnel lives inside its work session: when the session ends, its streams end and
agentctl exits 3 with the gate's code."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.tunnel.conftest import TunnelStack
from tests.support.accounts import new_login
from tests.support.agentctl import AgentctlRunner
from tests.support.tunnel import agentctl_tunnel, free_port, threaded_echo_server


SESSIONS = "/api/work-sessions/sessions/"


def login_cli(tstack: TunnelStack, tmp_path: Path) -> tuple[AgentctlRunner, str]:
    """agentctl as a superuser logged in with a password (gated, auto-approved)."""
    _, _, token = new_login(tstack.cp, superuser=True)
    config = tmp_path / "agentctl.toml"
    config.write_text(f'url = "{tstack.cp.url}"\ntoken = "{token}"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
    env.update({"AGENTCTL_CONFIG": str(config), "PYTHONUNBUFFERED": "1"})
    return AgentctlRunner(tstack.cp, env), token


def new_session(cli: AgentctlRunner, server: str, scope: str, duration: str) -> str:
    result = cli.run(
        *("work-session", "create", "--purpose", "tunnel test", "--server", server),
        *("--scope", scope, "--expires-in", duration, "--output", "json"),
    )
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["work_session_id"])


def echo_once(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    assert sock.recv(len(data)) == data


def ended(sock: socket.socket) -> bool:
    """Whether the connection ends (EOF or reset) within the socket's timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def wait_exit(proc: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def test_tunnel_wrong_scope_is_denied(tstack: TunnelStack, tmp_path: Path) -> None:
    """A session without the ``tunnel`` scope: exit 3 with the seed's diagnostic."""
    cli, _ = login_cli(tstack, tmp_path)
    session = new_session(cli, tstack.server, "command", "1h")
    result = cli.run(
        *("tunnel", tstack.server, "-l", str(free_port()), "-r", "8080"),
        *("--work-session", session, "--output", "json"),
    )
    assert result.returncode == 3, result.stderr
    diagnostic = json.loads(result.stderr)
    assert diagnostic["error_code"] == "work_session_scope_not_allowed"
    assert diagnostic["context"]["required_scope"] == "tunnel"


@pytest.mark.timeout(60)
def test_tunnel_ends_when_its_session_completes(tstack: TunnelStack, tmp_path: Path) -> None:
    cli, token = login_cli(tstack, tmp_path)
    session = new_session(cli, tstack.server, "tunnel", "1h")
    with (
        threaded_echo_server() as port,
        agentctl_tunnel(cli, tstack.server, port, "--work-session", session) as tunnel,
    ):
        sock = socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=20)
        with sock:
            echo_once(sock, b"inside the session")
            with tstack.cp.client(token) as api:
                done = api.post(f"{SESSIONS}{session}/complete/")
                assert done.status_code == 200, done.text
            assert ended(sock)
        code, err = wait_exit(tunnel.proc)
        timeline = []
        with tstack.cp.client(token) as api:
            timeline = api.get(f"{SESSIONS}{session}/timeline/").json()["results"]
            tunnels = api.get("/api/tunnels/").json()["results"]
    assert code == 3, err
    assert "work_session_completed" in err
    assert any(item["type"] == "tunnel" for item in timeline)
    assert tunnels[0]["close_code"] == "work_session_completed"


@pytest.mark.timeout(60)
def test_tunnel_ends_when_its_session_expires(tstack: TunnelStack, tmp_path: Path) -> None:
    cli, _ = login_cli(tstack, tmp_path)
    # Long enough for agentctl to start on a loaded machine; the test waits for the expiry.
    session = new_session(cli, tstack.server, "tunnel", "8s")
    with (
        threaded_echo_server() as port,
        agentctl_tunnel(cli, tstack.server, port, "--work-session", session) as tunnel,
    ):
        sock = socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=30)
        with sock:
            echo_once(sock, b"before expiry")
            assert ended(sock)  # no fixed sleep: the expiry ends it
        code, err = wait_exit(tunnel.proc)
    assert code == 3, err
    assert "work_session_expired" in err
