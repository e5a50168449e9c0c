"""Which incoming websocket frames carry a download's bytes (pure).

A download's data frames can be received straight into the buffers the file is written
from (:mod:`fleetgate.agentctl.downsink`) instead of through websockets' parser, which
copies every payload twice and hands it over as a new object per frame. Everything else
(text frames, control frames, anything malformed) still goes to websockets, which answers
pings, runs the closing handshake and fails the connection on a protocol error as ever.

:func:`parse_head` reads an RFC 6455 frame header; :class:`FrameRouter` says, frame by
frame, whether a frame is taken (an unmasked, unextended binary frame, or a continuation
of a binary message) or handed on, keeping track of fragmented messages so that the
continuation frames of a text message are handed on with it.
"""

from __future__ import annotations

from dataclasses import dataclass


__all__ = ["BINARY", "CONT", "MAX_HEAD_BYTES", "TEXT", "FrameHead", "FrameRouter", "parse_head"]

CONT, TEXT, BINARY = 0x0, 0x1, 0x2
MAX_HEAD_BYTES = 14
"""The longest frame header: 2 bytes, an 8-byte length and a 4-byte mask key."""


@dataclass(frozen=True, slots=True)
class FrameHead:
    """One frame's header.

    Attributes:
        fin: the last frame of its message.
        rsv: the three reserved bits (non-zero only with an extension).
        opcode: the frame's opcode.
        masked: the payload is masked (a server's frames never are).
        length: the payload's length in bytes.
        size: the header's own length in bytes.
    """

    fin: bool
    rsv: int
    opcode: int
    masked: bool
    length: int
    size: int


def parse_head(data: bytes | bytearray | memoryview) -> FrameHead | None:
    """The header at the start of ``data``, or None when ``data`` holds only part of it."""
    if len(data) < 2:
        return None
    first, second = data[0], data[1]
    length, size = second & 0x7F, 2
    if length == 126:
        size = 4
    elif length == 127:
        size = 10
    masked = bool(second & 0x80)
    if masked:
        size += 4
    if len(data) < size:
        return None
    if length >= 126:
        length = int.from_bytes(data[2 : 4 if length == 126 else 10], "big")
    return FrameHead(
        fin=bool(first & 0x80),
        rsv=(first >> 4) & 0x7,
        opcode=first & 0x0F,
        masked=masked,
        length=length,
        size=size,
    )


class FrameRouter:
    """Decides, in stream order, which frames' payloads are a download's bytes.

    A frame is taken when it is unmasked, has no reserved bit set and is either a binary
    frame outside any fragmented message or a continuation of a binary one. A taken frame
    carries file bytes whatever its size: a binary message's bytes are the file's next
    bytes, so taking each one keeps them in order. Everything else is handed on; among
    those, a binary frame inside a fragmented message and a stray continuation frame are
    protocol errors, which websockets reports (or delivers as a message the caller
    refuses).
    """

    def __init__(self) -> None:
        self.message: int | None = None
        """The opcode of the fragmented message in progress, if any."""

    def take(self, head: FrameHead) -> bool:
        """Whether ``head``'s payload is file bytes (and account for the frame)."""
        if head.opcode >= 0x8:
            return False  # control frames come between fragments and change nothing
        clean = not head.masked and not head.rsv
        if head.opcode == BINARY and self.message is None and clean:
            self.message = None if head.fin else BINARY
            return True
        if head.opcode == CONT and self.message == BINARY and clean:
            self.message = None if head.fin else BINARY
            return True
        if head.opcode == TEXT and self.message is None:
            self.message = None if head.fin else TEXT
        elif head.opcode == CONT and self.message == TEXT and head.fin:
            self.message = None
        return False
