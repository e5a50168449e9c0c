"""A replica's writes to the shared database: one connection, and a batching outbox.

What need not wait for the database (frames for agents linked to other replicas, this
replica's link announcements, wake-ups) goes into the outbox: a bounded queue written by
one task, a batch per transaction, in order. Under load the batches grow (a fan-out to
thousands of agents is a handful of statements); when quiet each item is written at
once. Ordering holds per replica: a frame stored after another is sent after it.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import structlog

from fleetgate.controlplane.cluster import tables
from fleetgate.controlplane.cluster.bus import connect
from fleetgate.controlplane.cluster.notes import Note, wake_notes
from fleetgate.controlplane.cluster.tables import LinkRow


__all__ = ["MAX_BATCH", "MAX_PENDING", "Outbox", "Writer"]

log = structlog.get_logger("fleetgate.controlplane.cluster")

MAX_PENDING = 100_000
"""Items waiting to be written; beyond this a frame is refused (its command is delivered
again at the agent's next hello) and wake-ups are dropped."""
MAX_BATCH = 2_000
"""Items written per transaction at most."""


class Writer:
    """One connection for this replica's writes, reconnected when it breaks."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def run(self, work: Callable[[tables.Conn], Awaitable[Any]]) -> Any:
        """``work(conn)`` under the lock; one retry on a fresh connection if it broke."""
        async with self._lock:
            for attempt in (1, 2):
                conn = self._conn
                if conn is None or conn.closed:
                    conn = self._conn = await connect(self._conninfo)
                try:
                    return await work(conn)
                except psycopg.OperationalError:
                    await conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    async def close(self) -> None:
        """Close the connection (shutdown)."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


_Frame = tuple[str, str, str]  # replica id, server id, frame
_Item = tuple[str, Any]  # ("frame", _Frame) | ("up", LinkRow) | ("down", (...)) | ("wake", id)


class Outbox:
    """See the module docstring; :meth:`run` is the writing task."""

    def __init__(self, writer: Writer, *, max_pending: int = MAX_PENDING) -> None:
        self._writer = writer
        self._max = max_pending
        self._items: deque[_Item] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def _put(self, item: _Item) -> bool:
        if len(self._items) >= self._max:
            return False
        self._items.append(item)
        self._idle.clear()
        self._ready.set()
        return True

    def frame(self, replica_id: str, server_id: str, frame: str) -> bool:
        """Queue a frame for the agent of ``server_id`` linked to ``replica_id``."""
        ok = self._put(("frame", (replica_id, server_id, frame)))
        if not ok:
            log.warning("cluster.outbox_full", server_id=server_id)
        return ok

    def link_up(self, row: LinkRow) -> None:
        """Queue the announcement of a link held here (never dropped: links are few)."""
        self._items.append(("up", row))
        self._idle.clear()
        self._ready.set()

    def link_down(self, server_id: str, replica_id: str, connected_at: int) -> None:
        """Queue the end of a link held here."""
        self._items.append(("down", (server_id, replica_id, connected_at)))
        self._idle.clear()
        self._ready.set()

    def wake(self, command_ids: list[str]) -> None:
        """Queue wake-ups of the other replicas' streams of these commands."""
        for command_id in command_ids:
            if not self._put(("wake", command_id)):
                return

    def kick(self, server_id: str, replica_id: str) -> None:
        """Queue a ``kick`` note: ``replica_id`` closes the server's link."""
        self._items.append(("kick", (server_id, replica_id)))
        self._idle.clear()
        self._ready.set()

    def note(self, note: Note) -> None:
        """Queue a note of its own (sent in order with the rest)."""
        self._items.append(("note", note))
        self._idle.clear()
        self._ready.set()

    def poke(self, what: str) -> None:
        """Queue a ``poke`` note (``scheduler``, ``clock``) for the leader."""
        self._put(("poke", what))

    async def drained(self) -> None:
        """Wait until everything queued so far was written (or failed)."""
        await self._idle.wait()

    async def run(self) -> None:
        """Write batches until cancelled; a failed batch is logged and dropped."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._items:
                batch = [self._items.popleft() for _ in range(min(MAX_BATCH, len(self._items)))]
                try:
                    await self._writer.run(functools.partial(_write, batch=batch))
                except psycopg.Error as exc:
                    log.warning("cluster.outbox_failed", items=len(batch), error=type(exc).__name__)
            self._idle.set()


async def _write(conn: tables.Conn, *, batch: list[_Item]) -> None:
    async with conn.transaction():
        frames: list[_Frame] = []
        wakes: list[str] = []
        for kind, value in batch:
            if kind == "frame":
                frames.append(value)
                continue
            if frames:  # keep the order of frames and link changes
                await tables.put_agent_frames(conn, frames)
                frames = []
            if kind == "up":
                await tables.upsert_link(conn, value)
            elif kind == "down":
                await tables.delete_link(conn, *value)
            elif kind == "poke":
                await tables.notify(conn, Note("poke", value))
            elif kind == "note":
                await tables.notify(conn, value)
            elif kind == "kick":
                await tables.notify(conn, Note("kick", *value))
            else:
                wakes.append(value)
        if frames:
            await tables.put_agent_frames(conn, frames)
        for note in wake_notes(wakes):
            await tables.notify(conn, note)
