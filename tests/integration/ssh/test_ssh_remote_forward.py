"""``ssh -R`` on an agent whose owner turned on ``[ssh] remote_forwarding``: the agent
listens on the server's loopback and carries each connection back to the client, with
OpenSSH's rules (loopback only, privileged ports for root only) and the ``tunnel`` scope;
each listener and connection is on the session's timeline, and the port closes with the
client. Real OpenSSH client, real agent, real sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.integration.ssh.conftest import SSH_TIMEOUT, SshStack, forwarding, ssh
from tests.support.agent import running_agent
from tests.support.tunnel import (
    assert_echoed,
    connect_when_listening,
    free_port,
    threaded_echo_server,
)


pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def rstack(sstack: SshStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshStack]:
    """A second agent on the package's control plane, with remote forwarding on (and the
    ``tunnel`` feature, without which no session has the scope)."""
    root = tmp_path_factory.mktemp("ssh-remote")
    sections = {"ssh": {"remote_forwarding": True}, "tunnel": {"enabled": True}}
    with running_agent(sstack.cp, root / "agent", sections=sections) as agent:
        yield SshStack(sstack.cp, agent, sstack.user, sstack.token, root)


def _closed(port: int) -> bool:
    """Whether nothing listens on the port any more (the listener goes with the client)."""
    deadline = time.monotonic() + SSH_TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.05)
    return False


def test_ssh_R_carries_connections_on_the_servers_loopback_back(rstack: SshStack) -> None:
    session = rstack.session(("tunnel",))
    config = rstack.configure("remote", session)
    port = free_port()
    with (
        threaded_echo_server() as target,
        forwarding(config, "-R", f"{port}:127.0.0.1:{target}", rstack.server) as client,
        connect_when_listening(port, client) as sock,
    ):
        assert_echoed(sock)
    assert _closed(port), "the agent still listens after the client left"
    events = rstack.events(session, lambda es: sum(e["type"] == "tunnel" for e in es) >= 2)
    described = [e.get("description", "") for e in events if e["type"] == "tunnel"]
    assert f"ssh -R listening on localhost:{port}" in described, described
    assert any(d.startswith("ssh -R connection from 127.0.0.1:") for d in described), described


def test_ssh_R_refusals_say_why(rstack: SshStack) -> None:
    config = rstack.configure("remote-refused", rstack.session())
    port = free_port()
    cases = {
        f"0.0.0.0:{port}:127.0.0.1:22": "ssh -R listens on the server's loopback only",
        "80:127.0.0.1:22": "port 80 is below 1024: only root may listen there",
    }
    for forward, why in cases.items():
        done = ssh(config, "-R", forward, rstack.server, "echo ran")
        err = done.stderr.decode("utf-8", "replace")
        assert done.stdout == b"ran\n", err  # the rest of the connection goes on
        assert f"remote forwarding (-R) is refused: {why}" in err, err
        assert "remote port forwarding failed" in err, err
    # Without the tunnel scope the certificate does not permit forwarding at all.
    config = rstack.configure("remote-scope", rstack.session(("command",)))
    done = ssh(config, "-R", f"{port}:127.0.0.1:22", rstack.server, "echo ran")
    assert done.stdout == b"ran\n"
    assert "remote port forwarding failed" in done.stderr.decode("utf-8", "replace")
