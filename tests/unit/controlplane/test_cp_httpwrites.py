"""``httpwrites.TurnWriter`` on a real loopback TCP connection.

The server side is an asyncio transport wrapped in a :class:`TurnWriter`; the peer is a
plain socket read without blocking, so the test sees exactly when bytes were written.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from fleetgate.controlplane.httpwrites import MAX_HELD, TurnWriter


@dataclass
class Pair:
    writer: TurnWriter
    transport: asyncio.Transport
    peer: socket.socket


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            accepted.set_result(transport)

    server = await loop.create_server(Accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    peer = socket.create_connection(("127.0.0.1", port))
    peer.setblocking(False)
    try:
        transport = await asyncio.wait_for(accepted, 10)
        yield Pair(TurnWriter(transport, loop), transport, peer)
        transport.close()
    finally:
        peer.close()
        server.close()
        await server.wait_closed()


def _arrived(peer: socket.socket) -> bytes:
    """What the peer can read now, without waiting (``b""``: nothing yet)."""
    try:
        return peer.recv(1 << 20)
    except BlockingIOError:
        return b""


async def _read(peer: socket.socket, size: int) -> bytes:
    """Wait for ``size`` bytes (or the end of the stream)."""
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(10):
        while len(data) < size:
            chunk = await loop.sock_recv(peer, size - len(data))
            if not chunk:
                break
            data += chunk
    return data


async def test_writes_of_one_turn_leave_together_at_its_end(pair: Pair) -> None:
    pair.writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
    pair.writer.write(b"body")
    assert _arrived(pair.peer) == b""  # held: the turn is not over
    first = await _read(pair.peer, 23)
    assert first == b"HTTP/1.1 200 OK\r\n\r\nbody"


async def test_a_large_write_is_not_held(pair: Pair) -> None:
    pair.writer.write(b"x" * MAX_HELD)
    # Written within this turn: the peer has bytes before the loop ran anything.
    arrived = _arrived(pair.peer)
    assert arrived
    assert len(arrived + await _read(pair.peer, MAX_HELD - len(arrived))) == MAX_HELD
    pair.writer.write(b"tail")
    assert await _read(pair.peer, 4) == b"tail"


async def test_close_writes_what_is_held_first(pair: Pair) -> None:
    pair.writer.write(b"last words")
    pair.writer.close()
    assert pair.writer.is_closing()
    assert await _read(pair.peer, 1 << 10) == b"last words"  # then the end of the stream


async def test_nothing_is_written_once_the_transport_is_closing(pair: Pair) -> None:
    pair.writer.write(b"too late")
    pair.transport.close()  # e.g. the client went away meanwhile
    pair.writer.flush()
    assert await _read(pair.peer, 1 << 10) == b""
