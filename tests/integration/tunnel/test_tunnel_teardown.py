"""Killing the target, the client (agentctl) or the agent ends the stream cleanly: the
other ends see their connection end, and no process keeps file descriptors (hence no
channel task, which holds its sockets) from the dead stream."""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.integration.tunnel.conftest import TunnelStack
from tests.support.tunnel import agentctl_tunnel, free_port, open_fds, threaded_echo_server
from tests.support.waiting import eventually_blocking


def ended(sock: socket.socket) -> bool:
    """Whether the connection ends (EOF or reset) within the socket's timeout."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def fill(sock: socket.socket, limit: int = 64 * 1024 * 1024) -> int:
    """Send until the path stops taking data (nobody reads at the far end)."""
    sock.setblocking(False)
    sent = 0
    chunk = b"z" * 65536
    while sent < limit:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            if not select.select([], [sock], [], 1.0)[1]:
                break
    sock.setblocking(True)
    return sent


@contextmanager
def killable_echo() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """An echo server in its own process, to be killed with SIGKILL."""
    port = free_port()
    code = (
        "import socket,sys\n"
        "s=socket.create_server(('127.0.0.1',int(sys.argv[1])))\n"
        "print('ready',flush=True)\n"
        "c,_=s.accept()\n"
        "while d:=c.recv(65536): c.sendall(d)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(port)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        yield port, proc
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_tunnel_killed_target_ends_the_stream(tstack: TunnelStack) -> None:
    agent_pid = tstack.agent.process.pid  # type: ignore[union-attr]
    with killable_echo() as (port, target), agentctl_tunnel(tstack.cli, tstack.server, port) as t:
        baseline = open_fds(agent_pid)
        sock = socket.create_connection(("127.0.0.1", t.local_port), timeout=20)
        with sock:
            sock.sendall(b"hello")
            assert sock.recv(5) == b"hello"
            target.send_signal(signal.SIGKILL)
            assert ended(sock)
        eventually_blocking(lambda: open_fds(agent_pid) <= baseline)
        # The tunnel survives; a new connection to the dead port fails visibly.
        again = socket.create_connection(("127.0.0.1", t.local_port), timeout=20)
        with again:
            assert ended(again)
        code, err = t.stop()
    assert code == 0
    assert "tunnel_connect_failed" in err
    eventually_blocking(lambda: open_fds(agent_pid) <= baseline)


@pytest.mark.timeout(60)
def test_tunnel_killed_client_ends_the_stream(tstack: TunnelStack) -> None:
    """agentctl dies with data in flight towards a target that does not read: the agent
    still ends the stream (it watches the channel, not only the sockets)."""
    agent_pid = tstack.agent.process.pid  # type: ignore[union-attr]
    cp_pid = tstack.cp.process.pid  # type: ignore[union-attr]
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, agentctl_tunnel(tstack.cli, tstack.server, listener.getsockname()[1]) as t:
        agent_base, cp_base = open_fds(agent_pid), open_fds(cp_pid)
        client = socket.create_connection(("127.0.0.1", t.local_port), timeout=20)
        listener.settimeout(20)
        target, _ = listener.accept()
        with client, target:
            assert fill(client) > 0
            t.proc.send_signal(signal.SIGKILL)
            t.proc.wait(10)
            target.settimeout(30)
            assert ended(target)
        eventually_blocking(lambda: open_fds(agent_pid) <= agent_base)
        eventually_blocking(lambda: open_fds(cp_pid) <= cp_base)


@pytest.mark.timeout(90)
def test_tunnel_killed_agent_ends_the_stream(tstack: TunnelStack) -> None:
    """The agent dies: the client's connection ends, agentctl keeps no descriptor of it
    and serves again once the agent is back."""
    with threaded_echo_server() as port, agentctl_tunnel(tstack.cli, tstack.server, port) as t:
        ctl_base = open_fds(t.proc.pid)
        sock = socket.create_connection(("127.0.0.1", t.local_port), timeout=20)
        with sock:
            sock.sendall(b"before")
            assert sock.recv(6) == b"before"
            tstack.agent.kill()
            assert ended(sock)
        eventually_blocking(lambda: open_fds(t.proc.pid) <= ctl_base)
        assert t.proc.poll() is None
        tstack.agent.start()
        again = socket.create_connection(("127.0.0.1", t.local_port), timeout=20)
        with again:
            again.sendall(b"after")
            assert again.recv(5) == b"after"
        code, err = t.stop()
    assert code == 0, err
