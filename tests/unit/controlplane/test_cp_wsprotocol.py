"""The control plane's websocket protocol: what each connection holds."""

from __future__ import annotations

import threading

import uvicorn
from uvicorn.server import ServerState

from fleetgate.controlplane.wsprotocol import (
    SCRATCH,
    BulkReadsWebSocketProtocol,
    _ReceiveInPlace,
    _scratch,
)


async def _app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("not called")


async def test_connections_share_one_scratch_buffer() -> None:
    """An idle connection holds no read buffer of its own: 5,000 agents' backhauls would
    hold 320 MB of them (bench/fleet measures ~40 KB per agent in all)."""
    config = uvicorn.Config(_app, ws=BulkReadsWebSocketProtocol, log_level="warning")
    config.load()
    fronts = [
        _ReceiveInPlace(BulkReadsWebSocketProtocol(config, ServerState(), {})) for _ in range(3)
    ]
    buffers = {id(front.get_buffer(-1).obj) for front in fronts}
    assert len(buffers) == 1
    assert len(fronts[0].get_buffer(-1)) == SCRATCH


def test_each_thread_has_its_own_scratch_buffer() -> None:
    """Loops in other threads never write into this thread's buffer mid-read."""
    here = _scratch()
    there: list[memoryview] = []
    thread = threading.Thread(target=lambda: there.append(_scratch()))
    thread.start()
    thread.join(timeout=10)
    assert _scratch() is here
    assert there[0].obj is not here.obj
