"""The stream websockets `agentctl tunnel` keeps ready ahead of its next connections.

Each is dialled deferred (``?defer=1``, with ``reuse=1``): the control plane authorizes
and opens its stream only when a connection arrives and agentctl sends
``{"type": "open"}`` (:func:`send_open`), so a connection does not wait for a websocket
handshake. A stream that ended cleanly gives its websocket back (:meth:`ReadyLinks.give_back`)
for a later connection, so most streams cost no handshake at all.

How many are kept ready follows how many streams overlap: a connection that finds none
ready (the earlier ones still ending: their ``eof`` and ``end`` still on their way) makes
one more kept from then on (up to :data:`MAX_READY`), and is carried by whichever comes
first, a websocket given back or one dialled for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from fleetgate.shared.protocol.tunnel import OPEN_FRAME


__all__ = ["MAX_READY", "READY", "ReadyLinks", "close_quietly", "send_open"]

READY = 2
"""Stream websockets kept dialled ahead of the next connections, at first."""
MAX_READY = 6
"""At most this many kept ready, however many streams overlap."""


class ReadyLinks:
    """Deferred stream websockets, dialled or being dialled, oldest first."""

    def __init__(
        self, dial: Callable[[], Awaitable[ClientConnection]], stopping: Callable[[], bool]
    ) -> None:
        self._dial_one = dial
        self._stopping = stopping
        self._ready: deque[asyncio.Future[ClientConnection]] = deque()
        self._given_back = asyncio.Event()
        self.wanted = READY
        """Websockets kept ready now (one more each time a connection found none)."""

    async def first_dialled(self) -> None:
        """Fill up (:meth:`prepare`) and return once a dial is done (or failed)."""
        self.prepare()
        await asyncio.wait(self._ready)

    def prepare(self) -> None:
        """Dial websockets for the next streams up to :attr:`wanted` (deferred: they
        open nothing yet). Called when a stream ends without giving its websocket back (one
        given back stands for itself: a dial then would be one too many, closed when the
        stream before it gives its own back), so that dialling does not compete with a
        stream's own set-up."""
        while len(self._ready) < self.wanted and not self._stopping():
            self._dial()

    def _dial(self) -> None:
        """Dial one deferred websocket into the ready ones."""
        dialled = asyncio.ensure_future(self._dial_one())
        dialled.add_done_callback(lambda _: self._given_back.set())
        self._ready.append(dialled)

    def give_back(self, ws: ClientConnection) -> bool:
        """Keep the websocket of a stream that ended cleanly for a later one (last in
        line: the control plane may still be finishing that stream with the agent, and
        would hold the next open until then); False when enough are ready already."""
        if len(self._ready) >= self.wanted or self._stopping():
            return False
        kept: asyncio.Future[ClientConnection] = asyncio.get_running_loop().create_future()
        kept.set_result(ws)
        self._ready.append(kept)
        self._given_back.set()
        return True

    def take_dialled(self) -> ClientConnection | None:
        """Take the first ready websocket whose dial is done, dropping the dials that
        failed on the way (a stream that finds none dials without deferring: its error
        is the one told)."""
        while self._ready:
            ready = next((r for r in self._ready if r.done()), None)
            if ready is None:
                return None
            self._ready.remove(ready)
            if not ready.cancelled() and ready.exception() is None:
                return ready.result()
        return None

    async def take(self) -> ClientConnection | None:
        """The first ready websocket to be usable, waiting for one if none is yet; ``None``
        when every dial failed.

        None at all ready: more streams overlap than are kept ready (the earlier ones
        are still ending), so one more is kept from now on and dialled now; a websocket
        given back meanwhile (most often, within a millisecond) carries this stream
        instead of that dial (which then stays ready)."""
        if not self._ready and self.wanted < MAX_READY:
            self.wanted += 1
            self._dial()
        while True:
            ws = self.take_dialled()
            if ws is not None or not self._ready:
                return ws  # None: every dial failed
            self._given_back.clear()
            await self._given_back.wait()

    async def drop(self) -> None:
        """Close every ready websocket (and stop the dials under way)."""
        while self._ready:
            ready = self._ready.popleft()
            if not ready.done():
                ready.cancel()
            with contextlib.suppress(BaseException):
                await close_quietly(await ready)


def send_open(ws: ClientConnection, first: bytes) -> bool:
    """Send the open frame on a ready websocket, and ``first`` as the stream's first
    bytes, in one write: the control plane wakes once for both, and relays the bytes as
    soon as the stream is open. False: the websocket was closed while it waited (idle, a
    restarted control plane).

    Synchronous, unlike websockets' ``send`` (which would write each frame on its own):
    a ready websocket sends nothing else, and its transport is empty, so there is
    nothing to wait for.
    """
    if ws.protocol.state is not State.OPEN or ws.transport.is_closing():
        return False
    ws.protocol.send_text(OPEN_FRAME.encode())
    if first:
        ws.protocol.send_binary(first)
    ws.transport.write(b"".join(ws.protocol.data_to_send()))
    return True


async def close_quietly(ws: ClientConnection) -> None:
    """Close ``ws``, within 5 s, whatever happens."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 5)
