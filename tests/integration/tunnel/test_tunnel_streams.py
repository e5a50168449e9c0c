"""Streams through the whole stack: agentctl tunnel -> control plane -> agent -> target."""

from __future__ import annotations

import asyncio
import socket

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
