"""Streams through the whole stack: agentctl tunnel -> control plane -> agent -> target."""

from __future__ import annotations

import asyncio
import select
import socket

import pytest

from tests.integration.tunnel.conftest import TunnelStack
from tests.support.tunnel import agentctl_tunnel, echo_server


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
