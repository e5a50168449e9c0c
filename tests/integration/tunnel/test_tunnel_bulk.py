"""Bulk streams through the whole stack arrive byte-exact, in both directions."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.integration.tunnel.conftest import TunnelStack
from tests.support.tunnel import agentctl_tunnel, blocks, drain_hash, free_port, stream_hash


GIB = 1024 * 1024 * 1024

pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")


@contextmanager
def socat_target(command: str) -> Iterator[int]:
    """socat on 127.0.0.1 running ``command`` per connection, stdin/stdout on the socket."""
    port = free_port()
    proc = subprocess.Popen(
        ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"SYSTEM:{command}"],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "socat did not listen"
                time.sleep(0.02)
        yield port
    finally:
        proc.kill()
        proc.wait(10)


async def upload(port: int, total: int) -> tuple[str, bytes]:
    """Send ``total`` bytes, shut the write side, read the target's answer."""
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    digest = hashlib.sha256()
    with sock:
        for block in blocks(total):
            digest.update(block)
            await loop.sock_sendall(sock, block)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := await loop.sock_recv(sock, 4096):
            answer += chunk
    return digest.hexdigest(), answer


@pytest.mark.timeout(120)
async def test_tunnel_one_gib_upload_is_byte_exact(tstack: TunnelStack) -> None:
    """1 GiB from the client reaches the target intact (hashed by sha256sum there), and the
    hash comes back after the client's half-close."""
    with (
        socat_target("sha256sum") as port,
        agentctl_tunnel(tstack.cli, tstack.server, port) as tunnel,
    ):
        started = time.perf_counter()
        sent, answer = await asyncio.wait_for(upload(tunnel.local_port, GIB), 100)
        elapsed = time.perf_counter() - started
        assert answer.split()[0].decode() == sent
        code, err = await asyncio.to_thread(tunnel.stop)
    assert code == 0, err
    print(f"1 GiB upload through the tunnel: {GIB / elapsed / 1e6:.0f} MB/s")


@pytest.mark.timeout(90)
async def test_tunnel_download_is_byte_exact(tstack: TunnelStack) -> None:
    """256 MiB from the target reach the client intact (the agent's read side)."""
    total = 256 * 1024 * 1024
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)

    async def serve_once() -> None:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        with conn:
            for block in blocks(total):
                await loop.sock_sendall(conn, block)

    with listener, agentctl_tunnel(tstack.cli, tstack.server, listener.getsockname()[1]) as t:
        server = asyncio.create_task(serve_once())
        client = socket.create_connection(("127.0.0.1", t.local_port))
        client.setblocking(False)
        with client:
            count, received = await asyncio.wait_for(drain_hash(client), 60)
        await server
        assert count == total
        assert received == stream_hash(total)
