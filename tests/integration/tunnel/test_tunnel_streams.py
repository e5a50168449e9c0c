"""Streams through the whole stack: agentctl tunnel -> control plane -> agent -> target."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import select
import socket

import pytest

from tests.integration.tunnel.conftest import TunnelStack
from tests.support.tunnel import (
    agentctl_tunnel,
    assert_echoed,
    echo_server,
    threaded_echo_server,
)
from tests.support.waiting import eventually_blocking


async def _half_close(port: int) -> bytes:
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    with sock:
        await loop.sock_sendall(sock, b"ping through the tunnel")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := await loop.sock_recv(sock, 65536):
            data += chunk
        return data


async def test_tunnel_half_close_gets_the_reply(tstack: TunnelStack) -> None:
    """A client that shuts its write side still gets the whole reply, then EOF."""
    async with echo_server() as port:
        with agentctl_tunnel(tstack.cli, tstack.server, port) as tunnel:
            assert tunnel.ready_line.startswith(f"forwarding 127.0.0.1:{tunnel.local_port} -> ")
            reply = await asyncio.wait_for(_half_close(tunnel.local_port), 20)
            assert reply == b"ping through the tunnel"
            code, err = await asyncio.to_thread(tunnel.stop)
    assert code == 0, err


def test_tunnel_slow_reader_slows_the_writer(tstack: TunnelStack) -> None:
    """Through agentctl, the control plane and the agent: a target that does not read
    stops the client's writes after a bounded amount; then every byte arrives in order."""
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, agentctl_tunnel(tstack.cli, tstack.server, listener.getsockname()[1]) as t:
        client = socket.create_connection(("127.0.0.1", t.local_port), timeout=20)
        listener.settimeout(20)
        target, _ = listener.accept()
        with client, target:
            client.setblocking(False)
            written, chunk = 0, b"w" * 65536
            while written < 512 * 1024 * 1024:
                try:
                    written += client.send(chunk)
                except BlockingIOError:
                    if not select.select([], [client], [], 1.0)[1]:
                        break  # no progress for a second: the path is full
            else:
                pytest.fail("the writer was never slowed down")
            # Kernel buffers of four TCP hops plus bounded websocket queues; not 512 MiB.
            assert written < 96 * 1024 * 1024, written
            client.setblocking(True)
            client.shutdown(socket.SHUT_WR)
            received = 0
            while data := target.recv(1024 * 1024):
                assert data == b"w" * len(data)
                received += len(data)
            assert received == written


def test_tunnel_to_ipv6_loopback(tstack: TunnelStack) -> None:
    """``--remote-host ::1`` reaches a service that listens on IPv6 loopback only."""
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with (
        listener,
        agentctl_tunnel(
            tstack.cli, tstack.server, listener.getsockname()[1], "--remote-host", "::1"
        ) as t,
    ):
        assert t.ready_line.rstrip().endswith(f"::1:{listener.getsockname()[1]}")
        client = socket.create_connection(("127.0.0.1", t.local_port), timeout=20)
        listener.settimeout(20)
        target, _ = listener.accept()
        with client, target:
            client.sendall(b"six")
            assert target.recv(3) == b"six"


def test_tunnel_deleted_elsewhere_ends_its_streams(tstack: TunnelStack) -> None:
    """Deleting the tunnel through the API resets its open streams and stops agentctl."""
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, agentctl_tunnel(tstack.cli, tstack.server, listener.getsockname()[1]) as t:
        client = socket.create_connection(("127.0.0.1", t.local_port), timeout=20)
        listener.settimeout(20)
        target, _ = listener.accept()
        with client, target, tstack.cp.client() as api:
            open_tunnels = api.get("/api/tunnels/", params={"open": "true"}).json()["results"]
            mine = [x for x in open_tunnels if x["remote_port"] == listener.getsockname()[1]]
            assert mine[0]["streams"] == 1
            assert api.delete(f"/api/tunnels/{mine[0]['id']}/").status_code == 204
            with pytest.raises(ConnectionResetError):
                client.recv(1)
            target.settimeout(20)
            with pytest.raises(ConnectionResetError):  # the agent's side was reset too
                target.recv(1)
        _, err = t.proc.communicate(timeout=20)
    assert t.proc.returncode == 1
    assert "TUNNEL_CLOSED" in err


def test_tunnel_ready_line_in_json(tstack: TunnelStack) -> None:
    """With --output json the ready line is one JSON object naming the tunnel."""
    with (
        threaded_echo_server() as port,
        agentctl_tunnel(tstack.cli, tstack.server, port, "--output", "json", ready_prefix="{") as t,
    ):
        ready = json.loads(t.ready_line)
        assert ready["local"] == f"127.0.0.1:{t.local_port}"
        assert ready["remote"] == f"127.0.0.1:{port}"
        assert ready["server"] == tstack.server
        with tstack.cp.client() as api:
            assert api.get(f"/api/tunnels/{ready['tunnel_id']}/").json()["closed_at"] is None
        code, _ = t.stop()
        assert code == 0
        with tstack.cp.client() as api:
            closed = api.get(f"/api/tunnels/{ready['tunnel_id']}/").json()
        assert closed["close_code"] == "TUNNEL_CLOSED"  # Ctrl-C deletes the tunnel


def _lowest_free_fd(pid: int) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(n for n in range(len(used) + 1) if n not in used)


def test_tunnel_out_of_descriptors_says_so_then_carries_the_connection(
    tstack: TunnelStack,
) -> None:
    """A connection that comes while agentctl cannot accept (no descriptor left) waits
    in the listen backlog: agentctl says why, retries, and carries it once it can."""
    with (
        threaded_echo_server() as port,
        agentctl_tunnel(tstack.cli, tstack.server, port) as tunnel,
    ):
        pid, stderr = tunnel.proc.pid, tunnel.proc.stderr
        assert stderr is not None
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        # The next descriptor would be the lowest free one: now past the limit.
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (_lowest_free_fd(pid), hard))
        with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=20) as client:
            told = ""
            while "cannot accept" not in told:
                assert select.select([stderr], [], [], 20)[0], "agentctl did not say it"
                told = stderr.readline()
            assert "Too many open files" in told
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
            assert_echoed(client)
        code, err = tunnel.stop()
    assert code == 0, err


def test_tunnel_streams_audited_opened_then_closed(tstack: TunnelStack) -> None:
    """Every stream leaves ``channel.opened`` then ``channel.closed`` in the agent's audit
    log (the first is written once the stream is under way, still before the second)."""
    audit = tstack.agent.logs_dir / "audit.log"
    start = audit.stat().st_size if audit.exists() else 0
    with threaded_echo_server() as port, agentctl_tunnel(tstack.cli, tstack.server, port) as t:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", t.local_port), timeout=20) as client:
                assert_echoed(client)
        code, err = t.stop()
    assert code == 0, err

    def events() -> dict[str, list[str]]:
        with audit.open("rb") as f:
            f.seek(start)
            lines = [json.loads(line) for line in f.read().splitlines()]
        found: dict[str, list[str]] = {}
        for line in lines:
            if line.get("kind") == "tunnel":
                found.setdefault(line["channel_id"], []).append(line["event"])
        # Only this test's channels: an earlier test's last stream may end meanwhile.
        return {c: e for c, e in found.items() if "channel.opened" in e}

    # The probe and three streams, each closed (the agent may still be ending the last).
    eventually_blocking(
        lambda: len(events()) == 4 and all(e[-1] == "channel.closed" for e in events().values())
    )
    assert all(e == ["channel.opened", "channel.closed"] for e in events().values()), events()
