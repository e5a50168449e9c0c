"""An HTTP server behind a tunnel answers 200 concurrent requests, each correctly."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.integration.tunnel.conftest import TunnelStack
from tests.support.serving import serving
from tests.support.tunnel import agentctl_tunnel


CONCURRENT = 200


def body_for(path: str) -> bytes:
    """A distinct body per path, a few KiB to a few hundred KiB long."""
    seed = hashlib.sha256(path.encode()).digest()
    return seed * (64 + 64 * (seed[0] % 64))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = body_for(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


@contextmanager
def http_server() -> Iterator[int]:
    with serving(_Server(("127.0.0.1", 0), _Handler)) as port:
        yield port


async def get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
        return int(status_line.split()[1]), body
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.timeout(120)
async def test_tunnel_http_200_concurrent_requests(tstack: TunnelStack) -> None:
    with http_server() as port, agentctl_tunnel(tstack.cli, tstack.server, port) as tunnel:
        paths = [f"/item/{i}" for i in range(CONCURRENT)]
        answers = await asyncio.wait_for(
            asyncio.gather(*(get(tunnel.local_port, p) for p in paths)), 90
        )
        for path, (status, body) in zip(paths, answers, strict=True):
            assert status == 200, path
            assert body == body_for(path), path
        code, err = await asyncio.to_thread(tunnel.stop)
    assert code == 0, err
    assert "refused" not in err
