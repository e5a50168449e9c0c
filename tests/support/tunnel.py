"""Tunnel test support: TCP targets on loopback and fast, checkable byte streams."""

from __future__ import annotations

import asyncio
import hashlib
import os
import select
import signal
import socket
import socketserver
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from tests.support.agentctl import AgentctlRunner
from tests.support.serving import serving


__all__ = [
    "BLOCK",
    "TunnelProcess",
    "agentctl_tunnel",
    "assert_echoed",
    "blocks",
    "connect_when_listening",
    "drain_hash",
    "echo_server",
    "free_port",
    "open_fds",
    "send_blocks",
    "stream_hash",
    "threaded_echo_server",
]

BLOCK = 1024 * 1024
_RANDOM = os.urandom(BLOCK)


def blocks(total: int) -> Iterator[bytes]:
    """``total`` bytes in 1 MiB blocks: random content, each block numbered in its first
    eight bytes, so a lost, repeated or reordered block changes the hash."""
    index = 0
    while total > 0:
        size = min(BLOCK, total)
        yield (struct.pack(">Q", index) + _RANDOM[8:])[:size]
        total -= size
        index += 1


def stream_hash(total: int) -> str:
    """The hash of :func:`blocks` of ``total`` bytes."""
    digest = hashlib.blake2b()
    for block in blocks(total):
        digest.update(block)
    return digest.hexdigest()


async def send_blocks(sock: socket.socket, total: int, *, shutdown: bool = True) -> str:
    """Send :func:`blocks` on the non-blocking ``sock``; shut its write side; the hash."""
    loop = asyncio.get_running_loop()
    digest = hashlib.blake2b()
    for block in blocks(total):
        digest.update(block)
        await loop.sock_sendall(sock, block)
    if shutdown:
        sock.shutdown(socket.SHUT_WR)
    return digest.hexdigest()


async def drain_hash(sock: socket.socket) -> tuple[int, str]:
    """Read the non-blocking ``sock`` to EOF: (byte count, hash)."""
    loop = asyncio.get_running_loop()
    digest = hashlib.blake2b()
    count = 0
    while data := await loop.sock_recv(sock, 1024 * 1024):
        digest.update(data)
        count += len(data)
    return count, digest.hexdigest()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A streaming echo server on 127.0.0.1 (echoes until EOF, then half-closes); its port."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


@contextmanager
def threaded_echo_server() -> Iterator[int]:
    """:func:`echo_server` in threads, for tests that use blocking sockets; its port."""
    with serving(_EchoServer(("127.0.0.1", 0), _EchoHandler)) as port:
        yield port


def connect_when_listening(
    port: int, client: subprocess.Popen[bytes], timeout: float = 60.0
) -> socket.socket:
    """A connection to loopback ``port`` once something listens there (a forward that
    ``client`` sets up); fails at once if ``client`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            assert client.poll() is None, f"the client exited before port {port} listened"
            assert time.monotonic() < deadline, f"nothing listened on port {port}"
            time.sleep(0.05)


def assert_echoed(sock: socket.socket) -> None:
    """Send a line and 300 KB of random bytes through ``sock`` (to an echo server): each
    comes back whole and unchanged."""
    for data in (b"ping\n", os.urandom(300_000)):
        sock.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = sock.recv(65536)
            assert chunk, "the stream ended before the echo"
            got += chunk
        assert got == data


def open_fds(pid: int) -> int:
    """How many file descriptors process ``pid`` holds (from /proc)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class TunnelProcess:
    """A running `agentctl tunnel` subprocess and the local port it forwards."""

    proc: subprocess.Popen[str]
    local_port: int
    ready_line: str

    def stop(self, timeout: float = 20.0) -> tuple[int, str]:
        """SIGINT (Ctrl-C), then its exit code and stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err


def free_port() -> int:
    """A free TCP port on loopback (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def agentctl_tunnel(
    cli: AgentctlRunner,
    server: str,
    remote_port: int,
    *extra: str,
    timeout: float = 30.0,
    ready_prefix: str = "forwarding ",
) -> Iterator[TunnelProcess]:
    """`agentctl tunnel SERVER -l <free> -r remote_port`, once it printed its ready line."""
    local = free_port()
    proc = cli.popen("tunnel", server, "-l", str(local), "-r", str(remote_port), *extra)
    assert proc.stdout is not None
    ready = select.select([proc.stdout], [], [], timeout)[0]
    line = proc.stdout.readline() if ready else ""
    tunnel = TunnelProcess(proc, local, line)
    try:
        if not line.startswith(ready_prefix):
            code, err = tunnel.stop()
            raise AssertionError(f"agentctl tunnel did not start (exit {code}): {line!r} {err}")
        yield tunnel
    finally:
        tunnel.stop()
