"""Ctrl-C during `agentctl cp`: cancelling leaves no thread blocked, so the process ends."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path

import pytest

from fleetgate.agentctl.filedownload import DiskWriter
from fleetgate.agentctl.fileupload import DiskReader
from tests.support.waiting import eventually


def _run_bounded(main: object, timeout: float = 10.0) -> None:
    """``asyncio.run(main)`` in a thread: it must return (its executor shut down) in time."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(main)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - reported below
            failure.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the event loop did not shut down: a thread is left blocked"
    if failure:
        raise failure[0]


def test_cancelling_an_upload_read_leaves_nothing_blocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop waits for a chunk while the disk is slow; Ctrl-C cancels the wait, the
    reader is closed, and the loop (with its default executor) shuts down at once."""
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(1 << 20))
    disk_slow = threading.Event()
    real_preadv = os.preadv

    def slow_preadv(fd: int, buffers: list[memoryview], offset: int, *flags: int) -> int:
        disk_slow.wait(10)
        return real_preadv(fd, buffers, offset, *flags)

    monkeypatch.setattr(os, "preadv", slow_preadv)

    async def main() -> None:
        fd = os.open(source, os.O_RDONLY)
        try:
            reader = DiskReader(fd, 0, hashlib.sha256())
            waiting = asyncio.create_task(reader.get())
            await asyncio.sleep(0)
            waiting.cancel()  # Ctrl-C while the disk is slow
            with pytest.raises(asyncio.CancelledError):
                await waiting
            disk_slow.set()
            await reader.aclose()
            assert not reader.thread.is_alive()
        finally:
            os.close(fd)

    _run_bounded(main())


def test_cancelling_a_download_write_leaves_nothing_blocked(tmp_path: Path) -> None:
    """The loop is cancelled while the writer's queue is full; closing still writes what
    was queued and the thread ends."""
    target = tmp_path / "out.bin"

    async def main() -> None:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            writer = DiskWriter(fd, hashlib.sha256(), 0)
            chunk = b"x" * 65536

            async def flood() -> None:
                while True:
                    await writer.put(chunk)

            flooding = asyncio.create_task(flood())
            # Cancelled while blocked on a full queue (the disk thread is behind).
            await eventually(writer.q.async_q.full, 5, "the writer's queue filled up")
            flooding.cancel()
            with pytest.raises(asyncio.CancelledError):
                await flooding
            await writer.aclose()
            assert not writer.thread.is_alive()
        finally:
            os.close(fd)
        assert target.stat().st_size % 65536 == 0

    _run_bounded(main())
