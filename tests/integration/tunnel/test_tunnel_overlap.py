"""Streams that overlap are still carried on kept websockets: the agent's pooled one is
idle again as soon as the agent said ``end`` (the client's side of the stream may still
be ending), and when more streams overlap than were kept ready, agentctl and the agent
each keep one more from then on."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import ClientConnection, connect

from fleetgate.shared.protocol.tunnel import END_FRAME, EOF_FRAME, OPEN_FRAME
from tests.integration.tunnel.conftest import TunnelStack
from tests.integration.tunnel.test_tunnel_reuse import (
    _after_eof_server,
    _create,
    _reused,
    _stream,
    _url,
    _warm,
    _websockets_to,
)
from tests.support.tunnel import agentctl_tunnel, echo_server
from tests.support.waiting import eventually


pytestmark = pytest.mark.timeout(90)


def _ended(tstack: TunnelStack) -> int:
    """Streams the agent ended so far, on a pooled websocket or not."""
    return tstack.agent.log_tail(2_000_000).count('"event": "tunnel.stream_ended"')


async def _until_end_is_due(ws: ClientConnection, payload: bytes) -> bytes:
    """A stream on ``ws`` up to the target's eof (the agent said ``end``): what came back.
    Our own ``end`` is left to the caller."""
    await ws.send(OPEN_FRAME)
    await ws.send(payload)
    await ws.send(EOF_FRAME)
    got = b""
    async with asyncio.timeout(20):
        while isinstance(frame := await ws.recv(), bytes):
            got += frame
    assert frame == EOF_FRAME, frame
    return got


async def test_the_agents_websocket_is_idle_again_once_it_said_end(tstack: TunnelStack) -> None:
    """Two streams whose client has not said ``end`` yet hold none of the agent's two
    pooled websockets: a third stream meanwhile is carried on one of them (before, it
    waited for a websocket the agent dialled for it, and that one was not kept)."""
    cp, key = tstack.cp, tstack.cp.admin_token
    async with _after_eof_server() as port:
        tunnel = _create(cp, key, tstack.server, port)
        await _warm(tstack, key, tunnel)
        before, ended = _reused(tstack), _ended(tstack)
        url, headers = _url(cp, tunnel), cp.auth_headers(key)
        async with (
            connect(url, additional_headers=headers) as first,
            connect(url, additional_headers=headers) as second,
        ):
            assert await _until_end_is_due(first, b"one") == b"got 3"
            assert await _until_end_is_due(second, b"two") == b"got 3"
            await eventually(lambda: _reused(tstack) == before + 2, what="two ended")
            async with connect(url, additional_headers=headers) as third:
                assert await _stream(third, b"three") == b"got 5"
            await eventually(lambda: _ended(tstack) == ended + 3, what="third ended")
            assert _reused(tstack) == before + 3  # on a pooled websocket, kept
            for ws in (first, second):
                await ws.send(END_FRAME)
                assert await _stream(ws, b"again") == b"got 5"  # kept for the next


async def _overlapping(port: int, count: int, round_: int) -> None:
    """``count`` connections through ``port`` open at once, each echoed, then all closed."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]
    for n, (reader, writer) in enumerate(conns):
        writer.write(b"round %d.%d" % (round_, n))
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(9), 20) == b"round %d.%d" % (round_, n)
    for _, writer in conns:
        writer.close()
        await writer.wait_closed()


async def test_more_overlapping_streams_than_kept_make_one_more_kept(
    tstack: TunnelStack,
) -> None:
    """Three connections at once where two websockets are kept on each leg: the third
    one's are dialled for it, and kept afterwards with the others (agentctl's ready
    ones, the agent's pooled ones), so the next time three overlap, all of them are
    carried on kept websockets and nothing is dialled."""
    cp_port = urlsplit(tstack.cp.url).port
    assert cp_port is not None
    agent = tstack.agent.process
    assert agent is not None
    async with echo_server() as port:
        with agentctl_tunnel(tstack.cli, tstack.server, port) as tunnel:
            pid = tunnel.proc.pid
            await _overlapping(tunnel.local_port, 1, 0)  # the agent starts its pool
            # Its backhaul and its two pooled websockets.
            await eventually(lambda: len(_websockets_to(agent.pid, cp_port)) == 3, what="pool")
            await eventually(lambda: len(_websockets_to(pid, cp_port)) == 2, what="two ready")
            ended = _ended(tstack)
            await _overlapping(tunnel.local_port, 3, 1)
            await eventually(lambda: _ended(tstack) == ended + 3, what="three ended")
            await eventually(lambda: len(_websockets_to(pid, cp_port)) == 3, what="three ready")
            await eventually(
                lambda: '"event": "channel.pool_grown"' in tstack.agent.log_tail(2_000_000),
                what="one more pooled websocket on the agent",
            )
            ready = _websockets_to(pid, cp_port)
            before, ended = _reused(tstack), ended + 3
            await _overlapping(tunnel.local_port, 3, 2)
            await eventually(lambda: _ended(tstack) == ended + 3, what="three ended")
            assert _reused(tstack) == before + 3  # all on the agent's pooled websockets
            await eventually(lambda: _websockets_to(pid, cp_port) == ready, what="all back")
