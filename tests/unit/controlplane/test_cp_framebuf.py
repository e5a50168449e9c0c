"""The session's frame buffer and the shared report writer, on a real event loop."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleetgate.controlplane.hub.framebuf import FrameBuffer
from fleetgate.controlplane.hub.ingest import ReportWriter, WriterClosed
from fleetgate.controlplane.store import Database, servers
from fleetgate.shared.protocol import CommandAcked


async def test_frames_come_out_in_order_in_batches() -> None:
    buf = FrameBuffer(maxsize=3)
    for frame in ("a", "b", "c"):
        await buf.put(frame)
    blocked = asyncio.create_task(buf.put("d"))  # full: waits for room
    await asyncio.sleep(0)
    assert not blocked.done()
    assert await buf.take(2) == ["a", "b"]
    async with asyncio.timeout(5):
        await blocked
    assert await buf.take(10) == ["c", "d"]
    waiting = asyncio.create_task(buf.take(10))  # empty: waits for a frame
    await asyncio.sleep(0)
    assert not waiting.done()
    await buf.put(b"e")
    async with asyncio.timeout(5):
        assert await waiting == [b"e"]


async def test_a_cancelled_take_leaves_the_buffer_usable() -> None:
    buf = FrameBuffer(maxsize=2)
    waiting = asyncio.create_task(buf.take(1))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await buf.put("x")
    assert await buf.take(1) == ["x"]


async def test_writer_batches_sessions_and_fails_cleanly_when_stopped(tmp_path: Path) -> None:
    db = Database(tmp_path / "cp.db")
    await db.open()
    try:
        created = await db.write(servers.register_server, "web-01", now=1)
        assert created is not None
        server_id = created[0].id
        writer = ReportWriter(db, max_reports=100)
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(writer.run())
            unknown = uuid.uuid4()
            report = CommandAcked(rid=7, command_id=unknown, acked_at=datetime.now(UTC))
            outcomes = await asyncio.gather(
                *(writer.store(server_id, [report], last_seen_at=5) for _ in range(20))
            )
            assert all(o.unknown == [(7, str(unknown))] for o in outcomes)
            runner.cancel()
        with pytest.raises(WriterClosed):
            await writer.store(server_id, [report], last_seen_at=6)
    finally:
        await db.close()
