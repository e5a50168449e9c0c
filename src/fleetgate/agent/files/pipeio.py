"""The worker's end of the framed pipes (blocking I/O on stdin and stdout).

One reusable buffer receives data frames, so reading a 1 GiB upload allocates nothing
per chunk; data frames are written with ``writev`` (header and payload in one call,
without concatenating them).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from fleetgate.shared.errors import TransferError
from fleetgate.shared.files.framing import (
    DATA,
    HEADER,
    TEXT,
    decode_header,
    decode_text,
    encode_header,
    encode_text,
)


__all__ = ["EndOfInput", "Frame", "PipeIO"]


class EndOfInput(Exception):
    """The agent closed the worker's stdin: the client went away."""


Frame = tuple[bytes, memoryview]
"""``(kind, payload)``; the payload is a view of the reader's buffer, valid until the
next read."""


class PipeIO:
    """Framed reads from ``rfd`` and writes to ``wfd``.

    Args:
        initial: starting size of the receive buffer (it grows up to the frame limit).
    """

    def __init__(self, rfd: int = 0, wfd: int = 1, initial: int = 1 << 20) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self._buf = bytearray(initial)
        self._header = bytearray(HEADER.size)

    def _fill(self, view: memoryview) -> bool:
        """Fill ``view`` completely; False on EOF before the first byte."""
        got = 0
        while got < len(view):
            n = os.readv(self.rfd, [view[got:]])
            if n == 0:
                if got == 0:
                    return False
                raise TransferError("malformed", "the input ended inside a frame")
            got += n
        return True

    def read(self) -> Frame:
        """The next frame.

        Raises:
            EndOfInput: stdin closed between frames.
            TransferError: a malformed or oversized frame.
        """
        if not self._fill(memoryview(self._header)):
            raise EndOfInput
        kind, length = decode_header(bytes(self._header))
        if length > len(self._buf):
            self._buf = bytearray(length)
        view = memoryview(self._buf)[:length]
        if length and not self._fill(view):
            raise TransferError("malformed", "the input ended inside a frame")
        return kind, view

    def read_text(self) -> dict[str, Any]:
        """The next frame, which must be a control object."""
        kind, payload = self.read()
        if kind != TEXT:
            raise TransferError("malformed", "expected a control frame")
        return decode_text(bytes(payload))

    def _write_all(self, parts: list[bytes | bytearray | memoryview]) -> None:
        views = [memoryview(p) for p in parts]
        while views:
            n = os.writev(self.wfd, views)
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if views and n:
                views[0] = views[0][n:]

    def send(self, obj: dict[str, Any]) -> None:
        """Write one control object."""
        self._write_all([encode_text(obj)])

    def send_fd(self, obj: dict[str, Any], fd: int) -> None:
        """Write one control object with a copy of descriptor ``fd`` attached (SCM_RIGHTS).

        The agent reads the header with ``recvmsg``, so the descriptor arrives with the frame
        it belongs to. Raises ``TransferError`` when stdout is not a Unix socket.
        """
        frame = encode_text(obj)
        dup = os.dup(self.wfd)
        try:
            sock = socket.socket(fileno=dup)
        except OSError as exc:
            os.close(dup)
            raise TransferError("internal", f"cannot hand the file over: {exc}") from None
        with sock:
            sock.setblocking(True)
            sent = socket.send_fds(sock, [frame], [fd])
            if sent < len(frame):  # a small frame on a blocking socket: not seen in practice
                sock.sendall(frame[sent:])

    def send_data(self, payload: bytes | bytearray | memoryview) -> None:
        """Write one data frame."""
        self._write_all([encode_header(DATA, len(payload)), payload])

    def error(self, exc: TransferError) -> None:
        """Report ``exc`` as the final ``error`` frame."""
        self.send({"type": "error", "code": exc.code, "message": exc.message[:4000]})
