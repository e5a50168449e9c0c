"""An HTTP response's writes made in one turn of the event loop leave as one.

uvicorn writes a response's status line and headers as soon as the application sends
``http.response.start``, then each body message as it comes: a JSON answer, or a
streaming create's ``created`` line, is two writes, two TCP segments and two wake-ups
of the client, although both were produced in the same step of the same task. Through
:class:`TurnWriter` the writes of one turn are joined and written once, at the end of
the turn (``loop.call_soon``); what a later turn writes (a stream's next line) is not
delayed beyond its own turn.

Only small writes wait: once :data:`MAX_HELD` bytes are held they are written at once,
so a large body never piles up here and the transport's flow control (``pause_writing``)
sees every byte as before.
"""

from __future__ import annotations

import asyncio
from typing import Any


__all__ = ["MAX_HELD", "TurnWriter"]

MAX_HELD = 64 * 1024
"""Bytes held for the end of the turn at most; more are written at once."""


class TurnWriter:
    """The transport of one HTTP request's response, with writes joined per loop turn.

    Everything but :meth:`write`, :meth:`close` and :meth:`is_closing` is the wrapped
    transport's own.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        """Hold ``data`` for the end of this turn (all of it at once past the bound)."""
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)
        self._size += len(data)
        if self._size >= MAX_HELD:
            self.flush()

    def flush(self) -> None:
        """Write what is held, as one write (nothing once the transport is closing)."""
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def is_closing(self) -> bool:
        """Whether the transport is closing (or closed)."""
        return self._transport.is_closing()

    def close(self) -> None:
        """Write what is held, then close the transport."""
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
