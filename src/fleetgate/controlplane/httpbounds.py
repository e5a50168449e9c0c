"""Bounded request heads: every request line and header block is answered, never hung.

uvicorn's httptools protocol buffers a request head of any size, and hands a websocket
upgrade to the websockets protocol, which refuses a header line over 8192 bytes (or more
than 128 headers) by closing its side silently: the client waited for ever. This
protocol counts the head as httptools parses it and answers a head larger than
:data:`MAX_HEAD_BYTES` or with more than :data:`MAX_HEADERS` headers with ``431 Request
Header Fields Too Large`` and closes, before the application (or the websocket
handshake) sees it. So whatever reaches the websockets parser is within its limits.

Its responses write through :class:`~fleetgate.controlplane.httpwrites.TurnWriter`
(the head and the body produced in one turn leave as one write).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fleetgate.controlplane.httpwrites import TurnWriter


__all__ = ["MAX_HEADERS", "MAX_HEAD_BYTES", "BoundedHttpToolsProtocol"]

MAX_HEAD_BYTES = 8192
"""The request line and all header lines together (nginx's and Apache's usual bound)."""
MAX_HEADERS = 100
"""Header lines in one request (the websockets parser refuses more than 128)."""


class _HeadTooLarge(Exception):
    """Raised inside a parser callback; httptools turns it into a parser error."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # received while the head is incomplete
        self._parsed = 0  # of the head, as parsed
        self._head_lines = 0
        self._in_head = True
        self._too_large = False

    def data_received(self, data: bytes) -> None:
        """Feed ``data``; a head still incomplete beyond the bound is refused now, so a
        header line without an end is never buffered for ever."""
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
            self._too_large = True
            self.send_400_response("Request header fields too large.")

    def on_message_begin(self) -> None:
        """A new request: its head is counted from zero."""
        super().on_message_begin()
        # Not _head_bytes: the chunk being fed, counted before, belongs to this head.
        self._parsed = 0
        self._head_lines = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        """Count the request target."""
        self._count(len(url) + 16)  # the method, the version and the line end
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count one header line."""
        self._head_lines += 1
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is complete (and within the bounds): the body is not counted.

        The response of the request (not a websocket upgrade, which takes the transport
        over) writes through a :class:`TurnWriter`: what one turn writes leaves as one.
        """
        self._in_head = False
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not before:
            self.cycle.transport = TurnWriter(self.transport, self.loop)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        """The request ended: a following one starts a new head."""
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        """uvicorn's error answer; ``431`` when the head was too large."""
        self._flush_response()  # the previous answer's last bytes go first
        if not self._too_large:
            super().send_400_response(msg)
            return
        body = b"Request header fields too large.\n"
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown, after writing what the answer still holds."""
        self._flush_response()
        super().shutdown()

    def _flush_response(self) -> None:
        """Write what the current answer's :class:`TurnWriter` holds now: the protocol
        is about to write or close on the transport itself."""
        transport = getattr(self.cycle, "transport", None)
        if isinstance(transport, TurnWriter):
            transport.flush()

    def _count(self, size: int) -> None:
        self._parsed += size
        if self._head_lines > MAX_HEADERS or self._parsed > MAX_HEAD_BYTES:
            self._too_large = True
            raise _HeadTooLarge
