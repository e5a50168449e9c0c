"""The replicas' bus: notes (``fleetgate.controlplane.cluster.notes``) from one replica
to all, on PostgreSQL ``LISTEN``/``NOTIFY``, or in process for a single control plane.

Delivery is at most once: a note sent while a replica's listening connection was down,
or dropped because its queue was full, is lost. The bus then hands :data:`RESYNC` to its
reader, which reloads what it mirrors from the tables (the notes only say "look now");
nothing a note announces exists only in the note.

Publishing goes through the caller's own connection (``NOTIFY`` inside the transaction
that wrote the row, delivered at commit), so this module only listens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, Protocol

import psycopg
import structlog
from psycopg.conninfo import make_conninfo

from fleetgate.controlplane.cluster.errors import BusClosed
from fleetgate.controlplane.cluster.notes import CHANNEL_NAME, Note, NoteError, parse_note
from fleetgate.shared.backoff import Backoff


__all__ = ["KEEPALIVES", "RESYNC", "Bus", "LocalBus", "PgBus", "Resync", "connect"]

log = structlog.get_logger("fleetgate.controlplane.cluster")

KEEPALIVES: Final = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
"""TCP keepalives on every cluster connection: a database host that vanished (no FIN)
is noticed in ~11 s instead of waiting on a dead socket for ever."""
QUEUE_NOTES = 10_000
"""Notes received and not yet handled; beyond this they are dropped and a resync follows."""


async def connect(conninfo: str) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection to the cluster's database, with :data:`KEEPALIVES`."""
    params = {k: str(v) for k, v in KEEPALIVES.items()}
    return await psycopg.AsyncConnection.connect(make_conninfo(conninfo, **params), autocommit=True)


class Resync:
    """Notes may have been lost: reload the mirrored state from the tables."""

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC: Final = Resync()


class Bus(Protocol):
    """What a replica reads from the bus."""

    async def receive(self) -> Note | Resync:
        """The next note, or :data:`RESYNC` after notes may have been lost."""
        ...

    def close(self) -> None:
        """Stop: :meth:`receive` raises :class:`BusClosed` from now on."""
        ...


class _Inbox:
    """A bounded queue of notes that degrades to one :data:`RESYNC` when full."""

    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[Note | Resync | None] = asyncio.Queue(size)
        self._overflowed = False
        self._closed = False

    def put(self, item: Note | Resync) -> None:
        if self._closed:
            return
        if self._overflowed and not isinstance(item, Resync):
            return  # a resync is pending: it covers this note too
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._overflowed = True
            log.warning("cluster.bus_overflow", queued=self._queue.qsize())

    async def get(self) -> Note | Resync:
        if self._closed:
            raise BusClosed("the bus is closed")
        if self._overflowed and self._queue.empty():
            self._overflowed = False
            return RESYNC
        item = await self._queue.get()
        if item is None:
            raise BusClosed("the bus is closed")
        return item

    def get_nowait(self) -> Note | Resync | None:
        """The next item if one is queued now (``None``: empty, or a resync is due)."""
        if self._closed or (self._overflowed and self._queue.empty()):
            return None
        try:
            item = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        if item is None:
            self._queue.put_nowait(None)  # keep the close marker for get()
        return item

    def close(self) -> None:
        self._closed = True
        # Wake a waiting reader: the queue may be full, then it is not waiting.
        try:
            self._queue.put_nowait(None)
        except asyncio.QueueFull:
            pass


class _Receiving:
    """The receiving side of a bus: what arrived waits in its bounded inbox."""

    _inbox: _Inbox

    async def receive(self) -> Note | Resync:
        """See :class:`Bus`."""
        return await self._inbox.get()

    def receive_nowait(self) -> Note | Resync | None:
        """The next note already received, if any (to handle several at once)."""
        return self._inbox.get_nowait()

    def close(self) -> None:
        """See :class:`Bus`."""
        self._inbox.close()


class LocalBus(_Receiving):
    """The bus of a single control plane: what it publishes, it receives (no peers)."""

    def __init__(self, size: int = QUEUE_NOTES) -> None:
        self._inbox = _Inbox(size)

    def publish(self, note: Note) -> None:
        """Deliver ``note`` to this process's reader."""
        self._inbox.put(note)


class PgBus(_Receiving):
    """Listens on the cluster's channel of one PostgreSQL database, reconnecting for ever.

    :meth:`run` is a long-lived task (owned by the caller's TaskGroup); every
    (re)connection is followed by :data:`RESYNC`, since notes sent meanwhile are lost.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        size: int = QUEUE_NOTES,
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._inbox = _Inbox(size)
        self._on_connected = on_connected
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled; reconnect with backoff when the connection is lost."""
        backoff = Backoff(0.1, 5.0, stable_after=10.0)
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._listen()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                log.warning("cluster.bus_lost", error=str(exc).strip()[:300])
            finally:
                self.connected.clear()
            await asyncio.sleep(backoff.next_delay(loop.time() - started))

    async def _listen(self) -> None:
        conn = await connect(self._conninfo)
        async with conn:
            await conn.execute(f"LISTEN {CHANNEL_NAME}")
            self.connected.set()
            self._inbox.put(RESYNC)
            if self._on_connected is not None:
                self._on_connected()
            log.info("cluster.bus_listening")
            async for notify in conn.notifies():
                try:
                    note = parse_note(notify.payload)
                except NoteError as exc:
                    log.warning("cluster.bad_note", error=str(exc), pid=notify.pid)
                    continue
                self._inbox.put(note)
