"""Frame headers and which frames carry a download's bytes (pure)."""

from __future__ import annotations

import pytest

from fleetgate.shared.files.bulkwrites import frame_header
from fleetgate.shared.files.frameheads import (
    BINARY,
    CONT,
    TEXT,
    FrameHead,
    FrameRouter,
    parse_head,
)


PING, CLOSE = 0x9, 0x8


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, (1 << 32) + 5])
@pytest.mark.parametrize("mask", [None, b"abcd"])
def test_headers_round_trip(length: int, mask: bytes | None) -> None:
    raw = frame_header(BINARY, True, length, mask)
    head = parse_head(raw + b"payload")
    assert head == FrameHead(
        fin=True, rsv=0, opcode=BINARY, masked=mask is not None, length=length, size=len(raw)
    )
    for cut in range(len(raw)):  # any part of a header is not a header yet
        assert parse_head(raw[:cut]) is None


def test_reserved_bits_and_fin_are_read() -> None:
    head = parse_head(bytes([0x40 | TEXT, 3]))
    assert head is not None
    assert (head.fin, head.rsv, head.opcode, head.length) == (False, 4, TEXT, 3)


def head(opcode: int, *, fin: bool = True, masked: bool = False, rsv: int = 0) -> FrameHead:
    return FrameHead(fin=fin, rsv=rsv, opcode=opcode, masked=masked, length=10, size=2)


def test_binary_frames_and_their_continuations_are_taken() -> None:
    router = FrameRouter()
    assert router.take(head(BINARY))
    assert router.take(head(BINARY, fin=False))
    assert not router.take(head(PING))  # a control frame between fragments
    assert router.take(head(CONT, fin=False))
    assert router.take(head(CONT))
    assert router.message is None
    assert not router.take(head(TEXT))


def test_a_fragmented_text_message_is_handed_on_whole() -> None:
    router = FrameRouter()
    assert not router.take(head(TEXT, fin=False))
    assert not router.take(head(CONT, fin=False))
    assert not router.take(head(CONT))
    assert router.take(head(BINARY))


@pytest.mark.parametrize(
    "frame",
    [
        head(BINARY, masked=True),  # a server never masks: websockets fails the connection
        head(BINARY, rsv=4),  # an extension nobody negotiated
        head(CONT),  # a continuation of nothing
        head(CLOSE),
    ],
)
def test_anything_else_is_handed_on(frame: FrameHead) -> None:
    assert not FrameRouter().take(frame)


def test_a_binary_frame_inside_a_fragmented_message_is_handed_on() -> None:
    router = FrameRouter()
    assert router.take(head(BINARY, fin=False))
    assert not router.take(head(BINARY))  # a protocol error: websockets reports it
