"""Large websocket frames read with one copy instead of three (a stream reader mixin).

websockets' sans-I/O parser reads through a ``StreamReader`` that appends every piece the
socket returned to one ``bytearray`` (a copy), slices each frame's payload out of it (a
second copy) and hands the frame a ``bytearray`` that becomes ``bytes`` when the message is
assembled (a third). A file transfer moves 2 MiB frames: measured, parsing 1 GiB of them
cost 0.35-0.67 s of CPU in the receiving process, on a machine where the whole transfer
(three processes, both SHA-256s) is CPU-bound.

:class:`BulkReadsMixin`, placed before websockets' ``StreamReader`` in a subclass (this
module does not import websockets: only the parts talking to the network do), keeps that
path for everything small and serves a read of at least :data:`BULK_BYTES` from the
pieces themselves: they are kept as received and joined once into the payload, ``bytes``
of exactly the frame's size (the message assembly then takes it as it is). The bytes of
the next frame that came in the same piece go back to the ordinary buffer. Nothing else
changes: the same limits (the caller's ``max_size`` is checked before the read), the same
errors at the end of the stream.

:func:`use_bulk_reads` switches a live reader's class (its state is the base class's own
``buffer`` and ``eof``), so it can be applied to a connection websockets or uvicorn
created, at any point between two ``receive_data`` calls.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any, ClassVar


__all__ = ["BULK_BYTES", "KEPT_BUFFERS", "BulkReadsMixin", "use_bulk_reads"]

BULK_BYTES = 64 * 1024
"""Reads at least this large are gathered piecewise (headers and small frames are not)."""

KEPT_BUFFERS = 4
"""Payload buffers a thread keeps for the next large frames of its connections (the most
recently freed). A connection holds one only while a frame's payload arrives into it and
until its next read: an idle connection that once received a large frame holds none."""

_kept = threading.local()


def _take(size: int) -> bytearray:
    """A kept buffer of ``size`` bytes, else a new one."""
    kept: list[bytearray] = getattr(_kept, "buffers", [])
    for index in range(len(kept) - 1, -1, -1):
        if len(kept[index]) == size:
            return kept.pop(index)
    return bytearray(size)


def _give(buffer: bytearray) -> None:
    """Keep ``buffer`` for another frame of its size (the oldest kept one goes)."""
    kept: list[bytearray] | None = getattr(_kept, "buffers", None)
    if kept is None:
        kept = _kept.buffers = []
    kept.append(buffer)
    if len(kept) > KEPT_BUFFERS:
        del kept[0]


class BulkReadsMixin:
    """Overrides ``feed_data``, ``read_exact`` and ``discard`` of websockets' StreamReader.

    While a bulk read waits, received pieces go to its list instead of the buffer; only
    one read runs at a time (the parser's), as with the base class.
    """

    buffer: bytearray
    eof: bool
    _pieces: list[Any] | None = None
    _have = 0
    reuse_payload: ClassVar[bool] = False
    """Set on a server's reader (the control plane's), whose parser unmasks every payload
    into a new object as soon as it is read: a bulk read then gathers into one buffer,
    given back to the thread's kept ones (:data:`KEPT_BUFFERS`) at the next read, and
    returns that buffer; a buffered transport receives into it directly
    (:meth:`bulk_room`)."""
    _target: bytearray | None = None
    _want = 0  # the size of the pending bulk read into ``_target`` (0: none)
    at_frame_start = False
    """The parser waits for the first byte of a frame, having consumed nothing of it (it
    waits in ``at_eof``, which it calls before each frame): the stream may be taken over
    here by another reader (``agentctl.downsink``)."""

    def at_eof(self) -> Generator[None, None, bool]:
        """The base class's ``at_eof``, noting while it waits (:attr:`at_frame_start`)."""
        self._free_target()
        self.at_frame_start = True
        try:
            ended: bool = yield from super().at_eof()  # type: ignore[misc]
            return ended
        finally:
            self.at_frame_start = False

    def feed_data(self, data: bytes | bytearray) -> None:
        """Add received bytes: to the pending bulk read, else to the buffer."""
        if self._want:
            self._feed_target(data)
            return
        pieces = self._pieces
        if pieces is None:
            super().feed_data(data)  # type: ignore[misc]
            return
        if self.eof:
            raise EOFError("stream ended")
        # The transport hands over a fresh bytes object per read; anything else may be
        # reused by its owner, so it is copied (as the base class's append would).
        pieces.append(data if type(data) is bytes else bytes(data))
        self._have += len(data)

    def read_exact(self, n: int) -> Generator[None, None, Any]:
        """Read exactly ``n`` bytes (a generator-based coroutine, as the base class's).

        A bulk read returns ``bytes`` (the base class a ``bytearray``): the frame parser
        takes either, and a message's assembly takes ``bytes`` without a copy.
        """
        self._free_target()
        if n < BULK_BYTES or len(self.buffer) >= n:
            return (yield from super().read_exact(n))  # type: ignore[misc]
        if self.reuse_payload:
            return (yield from self._read_target(n))
        pieces: list[Any] = [bytes(self.buffer)] if self.buffer else []
        self._have = len(self.buffer)
        del self.buffer[:]
        self._pieces = pieces
        try:
            yield from self._arrived(n)
        finally:
            self._pieces = None
        extra = self._have - n
        if extra:
            last = memoryview(pieces[-1])
            pieces[-1] = last[: len(last) - extra]
            self.buffer += last[len(last) - extra :]
        return b"".join(pieces)

    def _arrived(self, n: int) -> Generator[None, None, None]:
        """Wait until a bulk read has its ``n`` bytes (EOFError if the stream ends first)."""
        while self._have < n:
            if self.eof:
                raise EOFError(f"stream ends after {self._have} bytes, expected {n} bytes")
            yield

    def _free_target(self) -> None:
        """The parser asks for more: it unmasked the last payload into a new object, so
        that payload's buffer goes back to the thread's kept ones."""
        if self._target is not None and not self._want:
            _give(self._target)
            self._target = None

    def _read_target(self, n: int) -> Generator[None, None, bytearray]:
        """A bulk read into the kept buffer (:attr:`reuse_payload`)."""
        target = self._target = _take(n)
        self._have = len(self.buffer)
        target[: self._have] = self.buffer
        del self.buffer[:]
        self._want = n
        try:
            yield from self._arrived(n)
        finally:
            self._want = 0
        return target

    def _feed_target(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof:
            raise EOFError("stream ended")
        assert self._target is not None
        view = memoryview(data)
        taken = min(len(view), self._want - self._have)
        self._target[self._have : self._have + taken] = view[:taken]
        self._have += taken
        if taken < len(view):  # the next frame's first bytes
            self.buffer += view[taken:]

    def bulk_room(self) -> memoryview | None:
        """While a bulk read into the kept buffer waits: the part still to be received,
        for a transport to receive into (then :meth:`bulk_filled`)."""
        if not self._want or self._target is None:
            return None
        return memoryview(self._target)[self._have : self._want]

    def bulk_filled(self, count: int) -> None:
        """``count`` bytes were received into the room :meth:`bulk_room` gave (the parser
        then runs with no new data, ``receive_data(b"")``)."""
        self._have += count

    def discard(self) -> None:
        """Drop everything buffered, a pending bulk read's pieces too."""
        if self._pieces is not None:
            self._pieces.clear()
            self._have = 0
        if self._want:
            self._have = 0
        super().discard()  # type: ignore[misc]


def use_bulk_reads(reader: object, bulk_class: type) -> None:
    """Make ``reader`` (a websockets ``StreamReader``) an instance of ``bulk_class`` (its
    subclass with :class:`BulkReadsMixin` first), unless it is one already."""
    if isinstance(reader, bulk_class):
        return
    if not issubclass(bulk_class, type(reader)):
        raise TypeError(f"{bulk_class.__name__} does not extend {type(reader).__name__}")
    reader.__class__ = bulk_class
