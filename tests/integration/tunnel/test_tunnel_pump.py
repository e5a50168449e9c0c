"""The tunnel pump on both ends of a real websocket, without the control plane.

The "agent" end is a websockets server whose handler connects to a TCP target and pumps;
the "client" end pumps one side of a socket pair that the test uses as the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from fleetgate.shared.protocol.tunnel import END_FRAME, EOF_FRAME
from fleetgate.shared.pump import PumpResult, abort_socket, pump
from tests.support.tunnel import drain_hash, echo_server, send_blocks


CLOSED = (ConnectionClosed,)
READ = 256 * 1024
Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def agent_end(target_port: int, results: list[PumpResult]) -> AsyncIterator[str]:
    """A websocket server that carries each connection to 127.0.0.1:target_port."""

    async def handler(ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", target_port))
        results.append(await pump(sock, ws, read_bytes=READ, closed=CLOSED))

    async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
        port = server.sockets[0].getsockname()[1] if server.sockets else 0
        yield f"ws://127.0.0.1:{port}/"


async def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected non-blocking TCP sockets on loopback (a reset is a real RST)."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        app = socket.socket()
        app.setblocking(False)
        accepted = asyncio.ensure_future(loop.sock_accept(listener))
        await loop.sock_connect(app, listener.getsockname())
        ours, _ = await accepted
    ours.setblocking(False)
    return app, ours


@asynccontextmanager
async def client_end(url: str) -> AsyncIterator[tuple[socket.socket, asyncio.Task[PumpResult]]]:
    """The application's socket, whose peer is pumped over a websocket to ``url``."""
    app, ours = await tcp_pair()
    ws: ClientConnection = await connect(url, max_size=None, compression=None)
    task = asyncio.create_task(pump(ours, ws, read_bytes=READ, closed=CLOSED))
    try:
        yield app, task
    finally:
        app.close()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ws.close()


async def test_half_close_gets_the_whole_reply() -> None:
    """The application shuts its write side; the echo still arrives, then EOF."""
    results: list[PumpResult] = []
    loop = asyncio.get_running_loop()
    async with (
        echo_server() as port,
        agent_end(port, results) as url,
        client_end(url) as (
            app,
            task,
        ),
    ):
        await loop.sock_sendall(app, b"hello, half-closed world")
        app.shutdown(socket.SHUT_WR)
        assert await read_to_end(app) == b"hello, half-closed world"
        result = await asyncio.wait_for(task, 10)
    assert result.clean
    assert (result.sent, result.received) == (24, 24)
    assert results[0].clean


@pytest.mark.timeout(60)
async def test_bulk_stream_is_byte_exact() -> None:
    """64 MiB each way through the pump arrive intact (the 1 GiB run is end to end)."""
    total = 64 * 1024 * 1024
    results: list[PumpResult] = []
    async with (
        echo_server() as port,
        agent_end(port, results) as url,
        client_end(url) as (
            app,
            task,
        ),
    ):
        started = time.perf_counter()
        sent, (count, received) = await asyncio.gather(send_blocks(app, total), drain_hash(app))
        elapsed = time.perf_counter() - started
        assert count == total
        assert received == sent
        assert (await asyncio.wait_for(task, 10)).clean
    print(f"pump echo: {2 * total / elapsed / 1e6:.0f} MB/s both ways together")


async def writable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` becomes writable within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(sock, wake)
    try:
        await asyncio.wait_for(ready, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_writer(sock)


async def write_until_error(sock: socket.socket) -> None:
    """Write to ``sock`` until the kernel reports the connection is gone (bounded)."""
    loop = asyncio.get_running_loop()
    for _ in range(100):
        await loop.sock_sendall(sock, b"x" * 65536)


async def read_to_end(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until EOF."""
    loop = asyncio.get_running_loop()
    data = b""
    while chunk := await loop.sock_recv(sock, 65536):
        data += chunk
    return data


async def test_slow_reader_slows_the_writer() -> None:
    """A target that does not read stops the application's writes after a bounded amount;
    when it reads again, every byte arrives in order."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    results: list[PumpResult] = []
    with listener:
        async with (
            agent_end(listener.getsockname()[1], results) as url,
            client_end(url) as (
                app,
                task,
            ),
        ):
            target, _ = await loop.sock_accept(listener)
            target.setblocking(False)
            with target:
                written, chunk = 0, b"x" * 65536
                # Nobody reads the target: writes must stop (no progress for 1 s).
                while written < 256 * 1024 * 1024:
                    try:
                        written += app.send(chunk)
                    except BlockingIOError:
                        if not await writable(app, 1.0):
                            break
                else:
                    pytest.fail("the writer was never slowed down")
                # Kernel buffers of three TCP hops and the websocket queues: bounded.
                assert written < 64 * 1024 * 1024, written
                app.shutdown(socket.SHUT_WR)
                count, _ = await drain_hash(target)
                assert count == written
                target.shutdown(socket.SHUT_WR)
                assert (await asyncio.wait_for(task, 30)).clean
    assert results[0].received == written


async def test_target_reset_resets_the_application() -> None:
    """A reset on the target's side reaches the application as a failed connection."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    results: list[PumpResult] = []
    with listener:
        async with (
            agent_end(listener.getsockname()[1], results) as url,
            client_end(url) as (
                app,
                task,
            ),
        ):
            target, _ = await loop.sock_accept(listener)
            target.setblocking(False)
            await loop.sock_sendall(app, b"0123456789")
            assert await loop.sock_recv(target, 10) == b"0123456789"
            abort_socket(target)
            with pytest.raises(ConnectionResetError):
                await read_to_end(app)
            result = await asyncio.wait_for(task, 10)
    assert not result.clean
    assert result.code == "tunnel_reset"
    assert not results[0].clean
    assert results[0].code == "tunnel_reset"


@pytest.mark.parametrize(
    ("frames", "detail"),
    [
        (['{"type": "window", "size": 1}'], "bad tunnel control frame"),
        (["not json"], "bad tunnel control frame"),
        (['{"type": "eof"}' + " " * 9000], "control frame of"),
        (['{"type": "eof"}', b"late data"], "data after eof"),
        (['{"type": "eof"}', '{"type": "eof"}'], "eof received twice"),
    ],
)
async def test_protocol_violations_end_the_stream_with_an_error_frame(
    frames: list[str | bytes], detail: str
) -> None:
    """A malformed, oversized or out-of-order frame ends the stream: the application's
    connection is reset and the peer gets ``tunnel_protocol`` with the reason."""
    received: list[str | bytes] = []

    async def handler(ws: ServerConnection) -> None:
        for frame in frames:
            await ws.send(frame)
        received.extend([frame async for frame in ws])

    async with serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        async with client_end(url) as (app, task):
            result = await asyncio.wait_for(task, 10)
            # After a legitimate eof the application has seen EOF already; either way
            # its connection is over (reset) and writing to it fails.
            with contextlib.suppress(ConnectionResetError):
                await read_to_end(app)
            with pytest.raises(OSError):
                await write_until_error(app)
    assert result.code == "tunnel_protocol"
    assert detail in result.message
    errors = [f for f in received if isinstance(f, str) and '"error"' in f]
    assert errors
    assert '"tunnel_protocol"' in errors[-1]


async def test_link_loss_ends_the_stream() -> None:
    """The link dropping mid-stream resets the application's connection."""
    loop = asyncio.get_running_loop()

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(1011, "gone")

    async with serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        async with client_end(url) as (app, task):
            await loop.sock_sendall(app, b"data")
            result = await asyncio.wait_for(task, 10)
            with pytest.raises(ConnectionResetError):
                await loop.sock_recv(app, 10)
    assert result.code == "tunnel_closed"


# -- reuse: end instead of a close ---------------------------------------------------------


async def _pump_with_reuse(
    script: Callable[[ServerConnection, asyncio.Queue[str | bytes]], Awaitable[None]],
    app_side: Callable[[socket.socket], Awaitable[None]],
) -> tuple[PumpResult, list[str | bytes], bool]:
    """Pump one stream in reuse mode against a scripted control plane; the result, the
    frames the control plane got, and whether the link was still open afterwards."""
    frames: asyncio.Queue[str | bytes] = asyncio.Queue()
    done = asyncio.Event()
    failed: list[BaseException] = []  # the script's assertions, raised in the test

    async def handler(ws: ServerConnection) -> None:
        async def collect() -> None:
            async for frame in ws:
                frames.put_nowait(frame)

        async with asyncio.TaskGroup() as tg:
            collecting = tg.create_task(collect())
            try:
                await script(ws, frames)
            except (AssertionError, TimeoutError, ConnectionClosed) as exc:
                failed.append(exc)
            await done.wait()
            collecting.cancel()

    async with serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        app, ours = await tcp_pair()
        async with connect(url) as ws:
            try:
                task = asyncio.create_task(
                    pump(ours, ws, read_bytes=READ, closed=CLOSED, reuse=True)
                )
                await app_side(app)
                result = await asyncio.wait_for(task, 10)
                still_open = ws.close_code is None
            finally:
                app.close()
                done.set()
    if failed:
        raise failed[0]
    got = [frames.get_nowait() for _ in range(frames.qsize())]
    return result, got, still_open


async def _next(frames: asyncio.Queue[str | bytes]) -> str | bytes:
    return await asyncio.wait_for(frames.get(), 10)


async def test_reuse_the_last_eof_is_said_by_end_and_the_link_stays_open() -> None:
    """The peer's eof first, then the application's: one ``end`` stands for our eof."""
    loop = asyncio.get_running_loop()

    async def script(ws: ServerConnection, frames: asyncio.Queue[str | bytes]) -> None:
        await ws.send(b"hello")
        await ws.send(EOF_FRAME)
        assert await _next(frames) == b"bye"
        assert await _next(frames) == END_FRAME

    async def app_side(app: socket.socket) -> None:
        assert await read_to_end(app) == b"hello"  # half-closed by the peer's eof
        await loop.sock_sendall(app, b"bye")  # and still writing
        app.shutdown(socket.SHUT_WR)

    result, frames, still_open = await _pump_with_reuse(script, app_side)
    assert result.clean
    assert result.reusable
    assert (result.sent, result.received) == (3, 5)
    assert frames == []  # nothing after the end (the script consumed bye and end)
    assert still_open


async def test_reuse_our_eof_first_then_end_after_the_peers() -> None:
    loop = asyncio.get_running_loop()

    async def script(ws: ServerConnection, frames: asyncio.Queue[str | bytes]) -> None:
        assert await _next(frames) == b"ping"
        assert await _next(frames) == EOF_FRAME
        await ws.send(b"pong")
        await ws.send(EOF_FRAME)
        assert await _next(frames) == END_FRAME

    async def app_side(app: socket.socket) -> None:
        await loop.sock_sendall(app, b"ping")
        app.shutdown(socket.SHUT_WR)
        assert await read_to_end(app) == b"pong"

    result, _, still_open = await _pump_with_reuse(script, app_side)
    assert result.clean
    assert result.reusable
    assert still_open


async def test_reuse_an_end_from_the_control_plane_is_a_protocol_error() -> None:
    async def script(ws: ServerConnection, frames: asyncio.Queue[str | bytes]) -> None:
        await ws.send(END_FRAME)
        error = await _next(frames)
        assert isinstance(error, str)
        assert '"tunnel_protocol"' in error

    async def app_side(app: socket.socket) -> None:
        with contextlib.suppress(ConnectionResetError):
            await read_to_end(app)

    result, _, _ = await _pump_with_reuse(script, app_side)
    assert not result.clean
    assert not result.reusable
    assert result.code == "tunnel_protocol"
    assert "unexpected end frame" in result.message


async def test_link_lost_while_the_application_reads_nothing_ends_the_stream() -> None:
    """An application that neither reads nor writes: with its socket full, the pump
    waits on the socket, not on the link; the link's loss still ends the stream."""
    sent = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        for _ in range(128):  # 32 MiB: more than the sockets' buffers on the way hold
            await ws.send(b"f" * 256 * 1024)
        sent.set()
        ws.transport.abort()

    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        app, ours = await tcp_pair()
        # Room for every frame on the client: it keeps reading, so it sees the loss.
        async with connect(url, max_size=None, max_queue=256, compression=None) as ws:
            task = asyncio.create_task(pump(ours, ws, read_bytes=READ, closed=CLOSED))
            try:
                done, _ = await asyncio.wait({task}, timeout=30)
                assert done, "the stream did not end with its link"
            finally:
                app.close()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    assert sent.is_set()
    assert task.result().code == "tunnel_closed"
