"""A bounded frame buffer between one session's reader and its processor.

It does what ``asyncio.Queue`` does for one producer and one consumer, in a fraction of
the memory: an idle session holds an empty list and one pending future, not four deques
(an idle control plane holds thousands of sessions, see ``bench/fleet``).
"""

from __future__ import annotations

import asyncio


__all__ = ["FrameBuffer"]


class FrameBuffer:
    """FIFO of at most ``maxsize`` frames; one reader task puts, one processor takes."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: list[str | bytes] = []
        self._ready: asyncio.Future[None] | None = None
        self._space: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, frame: str | bytes) -> None:
        """Append a frame, waiting while the buffer is full."""
        while len(self._items) >= self.maxsize:
            self._space = asyncio.get_running_loop().create_future()
            try:
                await self._space
            finally:
                self._space = None
        self._items.append(frame)
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    async def take(self, limit: int) -> list[str | bytes]:
        """Wait for at least one frame; return up to ``limit`` of them, oldest first."""
        while not self._items:
            self._ready = asyncio.get_running_loop().create_future()
            try:
                await self._ready
            finally:
                self._ready = None
        batch = self._items[:limit]
        del self._items[:limit]
        if self._space is not None and not self._space.done():
            self._space.set_result(None)
        return batch
