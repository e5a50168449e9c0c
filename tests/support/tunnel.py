"""Tunnel test support: TCP targets on loopback and fast, checkable byte streams."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager


__all__ = [
    "BLOCK",
    "blocks",
    "drain_hash",
    "echo_server",
    "open_fds",
    "send_blocks",
    "stream_hash",
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


def open_fds(pid: int) -> int:
    """How many file descriptors process ``pid`` holds (from /proc)."""
    return len(os.listdir(f"/proc/{pid}/fd"))
