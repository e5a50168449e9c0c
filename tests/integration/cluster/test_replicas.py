"""Two control-plane replicas on one database: what is submitted to one reaches an agent
linked to the other (commands, channels), and a killed replica loses nothing."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.e2e.commands import follow, run_command
from tests.support.agent import AgentProcess, start_agent
from tests.support.agentctl import AgentctlRunner
from tests.support.controlplane import REPO_ROOT, ControlPlaneProcess
from tests.support.postgres import PostgresCluster
from tests.support.replicas import running_replicas
from tests.support.tunnel import agentctl_tunnel, drain_hash, send_blocks, threaded_echo_server
from tests.support.users import CreatedUser, temporary_user
from tests.support.websh import shell_round


pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, pg: PostgresCluster
) -> Iterator[list[ControlPlaneProcess]]:
    root = tmp_path_factory.mktemp("replicas")
    url = pg.create_database()
    with running_replicas(root, url) as started:
        yield started


@pytest.fixture(scope="module")
def agent_on_a(
    replicas: list[ControlPlaneProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    a = replicas[0]
    tunnels = {"enabled": True, "allowed_ports": ["1024-65535"]}
    agent = start_agent(
        a, tmp_path_factory.mktemp("agent"), name="on-a", sections={"tunnel": tunnels}
    )
    try:
        yield agent
    finally:
        agent.stop()


def test_a_command_created_on_b_reaches_the_agent_on_a(
    replicas: list[ControlPlaneProcess], agent_on_a: AgentProcess
) -> None:
    _, b = replicas
    with b.client() as api:
        server = api.get(f"/api/servers/servers/{agent_on_a.server_id}/").json()
        assert server["is_connected"] is True
        command = run_command(api, "on-a", "echo from-b")
    assert command["result"] == "from-b\n"
    assert command["streamed"] == "from-b\n"


def test_a_command_scheduled_on_b_runs_once_at_its_time(
    replicas: list[ControlPlaneProcess], agent_on_a: AgentProcess, tmp_path: Path
) -> None:
    """The leader's scheduler (whichever replica leads) is poked by b, sends it when
    due to the agent on a; it runs once."""
    _, b = replicas
    marker = tmp_path / "scheduled.txt"
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    with b.client() as api:
        created = api.post(
            "/api/events/commands/",
            json={"server": "on-a", "line": f"echo x >> {marker}", "scheduled_at": due.isoformat()},
        )
        assert created.status_code == 201, created.text
        command = follow(api, created.json()["id"])
    assert command["exit_code"] == 0
    assert datetime.fromisoformat(command["delivered_at"]) >= due
    assert marker.read_text(encoding="utf-8") == "x\n"


def test_deleting_on_b_a_server_linked_to_a_closes_its_link(
    replicas: list[ControlPlaneProcess], tmp_path: Path
) -> None:
    a, b = replicas
    doomed = start_agent(a, tmp_path / "doomed", name="doomed")
    try:
        with b.client() as api:
            response = api.delete(f"/api/servers/servers/{doomed.server_id}/")
            assert response.status_code in (200, 204), response.text
        assert doomed.process is not None
        # Its link on a is closed; dialling again, the agent is refused and stops.
        doomed.process.wait(timeout=30)
        assert "refused our credentials" in doomed.log_tail(), doomed.log_tail()
        assert "cluster.link_kicked" in a.log_tail(500_000)
    finally:
        doomed.stop()


@pytest.fixture(scope="module")
def cli_on_b(
    replicas: list[ControlPlaneProcess], tmp_path_factory: pytest.TempPathFactory
) -> AgentctlRunner:
    """agentctl configured for replica b only."""
    b = replicas[1]
    config = tmp_path_factory.mktemp("agentctl") / "agentctl.toml"
    config.write_text(f'url = "{b.url}"\ntoken = "{b.admin_token}"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
    env.update({"AGENTCTL_CONFIG": str(config), "PYTHONUNBUFFERED": "1", "TERM": "xterm"})
    return AgentctlRunner(b, env)


@pytest.mark.root
async def test_a_websh_through_b_to_the_agent_on_a(
    agent_on_a: AgentProcess, cli_on_b: AgentctlRunner
) -> None:
    """The terminal's client is on b, the agent's channel dial reaches a (its replica):
    a relays it to b over the authenticated hop."""
    with temporary_user() as user:
        await _websh_round(cli_on_b, user)
    a_log = agent_on_a.cp.log_tail(200_000)
    assert "cluster.channel_hop" in a_log


async def _websh_round(cli: AgentctlRunner, user: CreatedUser) -> None:
    argv = cli.argv("websh", "on-a", "-u", user.name)
    await shell_round(argv, cli.env, str(REPO_ROOT), user=user.name, tag="replica", exit_code=3)


async def test_a_tunnel_through_b_to_the_agent_on_a(
    agent_on_a: AgentProcess, cli_on_b: AgentctlRunner
) -> None:
    with (
        threaded_echo_server() as target,
        agentctl_tunnel(cli_on_b, "on-a", target) as tunnel,
    ):
        for _ in range(3):  # three streams, each its own channel through the hop
            with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=10) as sock:
                sock.setblocking(False)
                sent, (size, got) = await asyncio.gather(
                    send_blocks(sock, 256 * 1024), drain_hash(sock)
                )
            assert (size, got) == (256 * 1024, sent)


def test_a_tunnel_closed_on_a_ends_its_streams_relayed_by_b(
    replicas: list[ControlPlaneProcess], agent_on_a: AgentProcess, cli_on_b: AgentctlRunner
) -> None:
    """b caches the tunnel's row and relays its stream; closing it through a reaches b."""
    a, _ = replicas
    with (
        threaded_echo_server() as target,
        agentctl_tunnel(cli_on_b, "on-a", target) as tunnel,
        socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=10) as sock,
    ):
        sock.sendall(b"ping")
        assert sock.recv(16) == b"ping"  # the stream is up, relayed by b
        with a.client() as api:
            listed = api.get("/api/tunnels/").json()
            rows = listed["results"] if isinstance(listed, dict) else listed
            open_ids = [t["id"] for t in rows if t.get("closed_at") is None]
            assert len(open_ids) == 1, rows
            deleted = api.delete(f"/api/tunnels/{open_ids[0]}/")
            assert deleted.status_code in (200, 204), deleted.text
        sock.settimeout(15)
        try:
            rest = sock.recv(16)
        except ConnectionResetError:
            rest = b""
        assert rest == b"", "the stream outlived its tunnel"
    assert "tunnel.closed_elsewhere" in replicas[1].log_tail(500_000)
