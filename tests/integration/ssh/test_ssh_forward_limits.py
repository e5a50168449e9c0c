"""``ssh -L`` and ``ssh -R`` streams count against ``[tunnel] max_streams_per_tunnel`` (an
SSH connection is one tunnel) and ``max_streams`` (with the tunnels' own streams): at the
limit a new forwarded connection is closed and the refusal is on the timeline; a stream that
ends gives its slot back. Real OpenSSH client, real agent, real sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tests.integration.ssh.conftest import SSH_TIMEOUT, SshStack, forwarding
from tests.support.agent import running_agent
from tests.support.tunnel import (
    agentctl_tunnel,
    assert_echoed,
    connect_when_listening,
    free_port,
    threaded_echo_server,
)


pytestmark = pytest.mark.root

PER_CONNECTION = 2
TOTAL = 3


@pytest.fixture(scope="module")
def lstack(sstack: SshStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshStack]:
    """An agent with small stream limits, remote forwarding on."""
    root = tmp_path_factory.mktemp("ssh-limits")
    sections: dict[str, dict[str, Any]] = {
        "ssh": {"remote_forwarding": True},
        "tunnel": {
            "enabled": True,
            "allowed_ports": ["1024-65535"],
            "max_streams_per_tunnel": PER_CONNECTION,
            "max_streams": TOTAL,
        },
    }
    with running_agent(sstack.cp, root / "agent", sections=sections) as agent:
        yield SshStack(sstack.cp, agent, sstack.user, sstack.token, root)


def refused_at_once(port: int) -> None:
    """A connection to ``port`` is accepted by the forward's listener, then closed by it
    without carrying anything (the agent refused the stream)."""
    with socket.create_connection(("127.0.0.1", port), timeout=SSH_TIMEOUT) as sock:
        try:
            sock.sendall(b"ping\n")
            assert sock.recv(65536) == b"", "a stream over the limit was carried"
        except ConnectionResetError:
            pass


def echoed_soon(port: int) -> None:
    """A new stream through ``port`` is carried once a slot was given back (the agent
    learns that a stream ended asynchronously, after the client closed it)."""
    deadline = time.monotonic() + SSH_TIMEOUT
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=SSH_TIMEOUT) as sock:
                assert_echoed(sock)
                return
        except (AssertionError, ConnectionResetError):
            assert time.monotonic() < deadline, "the ended stream's slot was not given back"
            time.sleep(0.05)


def limit_refusals(stack: SshStack, session: str, count: int) -> list[dict[str, object]]:
    events = stack.events(
        session, lambda es: sum(e.get("code") == "tunnel_stream_limit" for e in es) >= count
    )
    return [e for e in events if e.get("code") == "tunnel_stream_limit"]


@pytest.mark.parametrize("option", ["-L", "-R"])
def test_ssh_forward_streams_are_limited_per_connection(lstack: SshStack, option: str) -> None:
    session = lstack.session(("tunnel",))
    config = lstack.configure(f"limit{option}", session)
    port = free_port()
    with threaded_echo_server() as target:
        # -L listens on the client's side, -R on the server's: loopback both here.
        spec = (
            f"127.0.0.1:{port}:127.0.0.1:{target}"
            if option == "-L"
            else f"{port}:127.0.0.1:{target}"
        )
        with forwarding(config, option, spec, lstack.server) as client, ExitStack() as held:
            for _ in range(PER_CONNECTION):
                sock = held.enter_context(connect_when_listening(port, client))
                assert_echoed(sock)
            refused_at_once(port)
            held.close()  # both streams end: their slots come back
            echoed_soon(port)
    refusal = limit_refusals(lstack, session, 1)[0]  # more if a retry came too soon
    assert refusal["denied"] is True
    assert f"this tunnel already carries {PER_CONNECTION} streams" in str(refusal["detail"])


def test_ssh_forwards_and_tunnels_share_the_servers_total(lstack: SshStack) -> None:
    session = lstack.session(("tunnel",))
    config = lstack.configure("limit-total", session)
    local = free_port()
    with (
        threaded_echo_server() as target,
        agentctl_tunnel(
            lstack.cli("limit-total-tunnel"), lstack.server, target, "--work-session", session
        ) as tunnel,
        forwarding(config, "-L", f"127.0.0.1:{local}:127.0.0.1:{target}", lstack.server) as client,
        ExitStack() as held,
    ):
        # Two tunnel streams and one ssh -L stream: the server's total (3) is reached.
        streams = [
            held.enter_context(
                socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=SSH_TIMEOUT)
            )
            for _ in range(2)
        ]
        for sock in streams:
            assert_echoed(sock)
        assert_echoed(held.enter_context(connect_when_listening(local, client)))
        refused_at_once(local)  # this connection: 1 of 2 streams; the server: 3 of 3
        streams[0].close()  # a tunnel's stream ends: an SSH forward may take its slot
        echoed_soon(local)
    refusal = limit_refusals(lstack, session, 1)[0]  # more if a retry came too soon
    assert f"this server already carries {TOTAL} tunnel streams" in str(refusal["detail"])
