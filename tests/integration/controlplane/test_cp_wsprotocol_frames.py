"""The control plane's websocket protocol, reached by a route through its scope extension:
data received already is taken without waiting (anything else is left for ``receive``),
and a text frame and data go out in one write, in order (a pipelined tunnel stream's
``channel.open`` and its client's first bytes)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from fleetgate.controlplane.wsprotocol import BulkReadsWebSocketProtocol, queued_bytes, send_with
from fleetgate.shared.files.bulkwrites import BULK_BYTES


pytestmark = pytest.mark.timeout(60)

LARGE = bytes(range(256)) * (BULK_BYTES // 128)  # a bulk-written frame
_done: list[bool] = []


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Nothing queued before the client spoke; after ``go``, the data queued behind it
    (taken) and the text after that (left); then a text frame and a large frame sent
    together, and nothing once closed."""
    websocket = WebSocket(scope, receive, send)
    await websocket.accept()
    before = queued_bytes(websocket)  # the client waits for "ready" before it speaks
    await websocket.send_text("ready")
    assert await websocket.receive_text() == "go"
    first = queued_bytes(websocket)
    then = queued_bytes(websocket)  # the next one is text: not taken
    assert await websocket.receive_text() == "text after the data"
    seen = {"before": before, "first": None if first is None else len(first), "then": then}
    await websocket.send_text(json.dumps(seen))
    assert send_with(websocket, "with large", lambda: LARGE)
    await websocket.close()
    taken: list[bool] = []

    def more() -> bytes | None:
        taken.append(True)
        return None

    assert not send_with(websocket, "after close", more)
    assert not taken  # ``more`` is not called when nothing can be sent
    _done.append(True)


@asynccontextmanager
async def _server() -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # a client may connect before the server runs: it waits in the backlog
    port = sock.getsockname()[1]
    config = uvicorn.Config(_app, ws=BulkReadsWebSocketProtocol, log_level="warning")
    server = uvicorn.Server(config)
    async with asyncio.TaskGroup() as tg:
        serving = tg.create_task(server.serve(sockets=[sock]))
        try:
            yield port
        finally:
            server.should_exit = True
            await serving


async def test_queued_data_is_taken_and_sent_with_a_text_frame_in_order() -> None:
    _done.clear()
    async with _server() as port, connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
        assert await ws.recv() == "ready"
        # One write: the server parses all three before the app reads the first.
        ws.protocol.send_text(b"go")
        ws.protocol.send_binary(b"first bytes")
        ws.protocol.send_text(b"text after the data")
        ws.transport.write(b"".join(ws.protocol.data_to_send()))
        assert json.loads(await ws.recv()) == {"before": None, "first": 11, "then": None}
        async with asyncio.timeout(20):
            assert await ws.recv() == "with large"
            assert await ws.recv() == LARGE  # after the text, whole
    assert _done == [True]  # the app's own checks passed
