"""Refusals with clear errors: a port the agent does not allow, a target that is not
loopback, an agent with tunnels disabled, stream limits, the work-session gate."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.tunnel.conftest import REFUSED_PORT, TunnelStack
from tests.support.accounts import new_login
from tests.support.agent import AgentProcess, running_agent
from tests.support.agentctl import AgentctlRunner
from tests.support.tunnel import agentctl_tunnel, free_port, threaded_echo_server


def tunnel_run(cli: AgentctlRunner, server: str, remote: int, *extra: str) -> tuple[int, str]:
    """Run `agentctl tunnel` expecting it to fail before it listens: (exit, stderr)."""
    result = cli.run("tunnel", server, "-l", str(free_port()), "-r", str(remote), *extra)
    assert "forwarding" not in result.stdout
    return result.returncode, result.stderr


def test_tunnel_port_not_allowed(tstack: TunnelStack) -> None:
    code, err = tunnel_run(tstack.cli, tstack.server, REFUSED_PORT)
    assert code == 1, err
    assert "tunnel_port_not_allowed" in err
    assert f"port {REFUSED_PORT} is not allowed" in err
    assert "1024-65535" in err


def test_tunnel_non_loopback_target(tstack: TunnelStack) -> None:
    code, err = tunnel_run(tstack.cli, tstack.server, 8080, "--remote-host", "10.0.0.1")
    assert code == 1, err
    assert "tunnel_target_not_allowed" in err
    assert "not a loopback address" in err


@pytest.mark.parametrize("host", ["example.com", "0.0.0.0", "192.168.1.1", "::", "localhost.x"])
def test_tunnel_api_refuses_non_loopback_hosts(tstack: TunnelStack, host: str) -> None:
    with tstack.cp.client() as api:
        answer = api.post(
            "/api/tunnels/",
            json={"server": tstack.server, "remote_port": 8080, "remote_host": host},
        )
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "tunnel_target_not_allowed"
    assert answer.json()["source"] == "remote_host"


def test_tunnel_api_validates_its_body(tstack: TunnelStack) -> None:
    with tstack.cp.client() as api:
        for body in (
            {"server": tstack.server, "remote_port": 0},
            {"server": tstack.server, "remote_port": 70000},
            {"server": tstack.server, "remote_port": "http"},
            {"server": tstack.server},
            {"server": tstack.server, "remote_port": 80, "host": "x"},
        ):
            answer = api.post("/api/tunnels/", json=body)
            assert answer.status_code == 400, (body, answer.text)
        missing = api.post("/api/tunnels/", json={"server": "no-such-server", "remote_port": 80})
        assert missing.status_code == 404
        assert missing.json()["code"] == "SERVER_NOT_FOUND"


def test_tunnel_streams_are_for_the_owner_only(tstack: TunnelStack) -> None:
    """Another principal gets 404 for someone's tunnel (nothing is leaked)."""
    _, _, token = new_login(tstack.cp)
    with tstack.cp.client() as api:
        created = api.post("/api/tunnels/", json={"server": tstack.server, "remote_port": 8080})
        assert created.status_code == 201, created.text
        tunnel_id = created.json()["id"]
    with tstack.cp.client(token) as other:
        assert other.get(f"/api/tunnels/{tunnel_id}/").status_code == 404
        assert other.delete(f"/api/tunnels/{tunnel_id}/").status_code == 404
    with tstack.cp.client() as api:
        assert api.delete(f"/api/tunnels/{tunnel_id}/").status_code == 204
        closed = api.get(f"/api/tunnels/{tunnel_id}/").json()
        assert closed["close_code"] == "TUNNEL_CLOSED"
        assert closed["closed_at"] is not None


@pytest.fixture(scope="module")
def other_agents(
    tstack: TunnelStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AgentProcess, AgentProcess]]:
    """One agent with tunnels disabled (the default), one allowing two streams at once."""
    root: Path = tmp_path_factory.mktemp("others")
    limits = {"enabled": True, "allowed_ports": ["1024-65535"]}
    limits |= {"max_streams_per_tunnel": 2, "max_streams": 2}
    with (
        running_agent(tstack.cp, root / "off") as off,
        running_agent(tstack.cp, root / "limited", sections={"tunnel": limits}) as limited,
    ):
        yield off, limited


def test_tunnel_disabled_by_default(
    tstack: TunnelStack, other_agents: tuple[AgentProcess, AgentProcess]
) -> None:
    code, err = tunnel_run(tstack.cli, other_agents[0].name, 8080)
    assert code == 1, err
    assert "tunnel_disabled" in err
    assert "[tunnel] enabled = false" in err


def test_tunnel_stream_limit(
    tstack: TunnelStack, other_agents: tuple[AgentProcess, AgentProcess]
) -> None:
    """Beyond max_streams_per_tunnel the new connection is reset; the others carry on."""
    with (
        threaded_echo_server() as port,
        agentctl_tunnel(tstack.cli, other_agents[1].name, port) as tunnel,
    ):
        held = [socket.create_connection(("127.0.0.1", tunnel.local_port)) for _ in range(2)]
        for sock in held:  # both are served: their echo comes back
            sock.sendall(b"x")
            sock.settimeout(20)
            assert sock.recv(1) == b"x"
        extra = socket.create_connection(("127.0.0.1", tunnel.local_port))
        extra.settimeout(20)
        with pytest.raises(ConnectionResetError):
            extra.recv(1)
        extra.close()
        held[0].sendall(b"y")
        assert held[0].recv(1) == b"y"
        for sock in held:
            sock.close()
        code, err = tunnel.stop()
    assert code == 0
    assert "tunnel_stream_limit" in err
    assert "max_streams" in err


def _login_cli(tstack: TunnelStack, tmp_path: Path) -> AgentctlRunner:
    _, _, token = new_login(tstack.cp, superuser=True)
    config = tmp_path / "agentctl.toml"
    config.write_text(f'url = "{tstack.cp.url}"\ntoken = "{token}"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
    env.update({"AGENTCTL_CONFIG": str(config), "PYTHONUNBUFFERED": "1"})
    return AgentctlRunner(tstack.cp, env)


def test_tunnel_needs_a_work_session_for_login_users(tstack: TunnelStack, tmp_path: Path) -> None:
    cli = _login_cli(tstack, tmp_path)
    code, err = tunnel_run(cli, tstack.server, 8080, "--output", "json")
    assert code == 3, err
    diagnostic = json.loads(err)
    assert diagnostic["error_code"] == "work_session_required"
    assert diagnostic["context"]["required_scope"] == "tunnel"
