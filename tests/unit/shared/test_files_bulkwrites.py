"""Bulk writes of websocket frames: the bytes on the wire parse, with websockets' own
parser on the other side, into exactly the frames websockets' own serializer sends."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State
from websockets.speedups import apply_mask

from fleetgate.shared.files.bulkwrites import BULK_BYTES, BulkWritesMixin, use_bulk_writes


class BulkClient(BulkWritesMixin, Protocol):
    masking = True

    @staticmethod
    def mask(data: Any, key: bytes) -> bytes:
        return apply_mask(data, key)


class BulkServer(BulkWritesMixin, Protocol):
    masking = False


def sender(side: Side, *, bulk: bool) -> Protocol:
    proto = Protocol(side, state=State.OPEN)
    if bulk:
        use_bulk_writes(proto, BulkClient if side is Side.CLIENT else BulkServer)
    return proto


def received(side: Side, wire: bytes) -> list[tuple[Opcode, bytes, bool]]:
    """What websockets' parser on the other end of ``side``'s connection reads."""
    peer = Protocol(Side.SERVER if side is Side.CLIENT else Side.CLIENT, state=State.OPEN)
    peer.receive_data(wire)
    events = peer.events_received()
    assert all(isinstance(e, Frame) for e in events)
    return [(e.opcode, bytes(e.data), e.fin) for e in events if isinstance(e, Frame)]


def send_all(proto: Protocol, messages: list[tuple[str, Any]]) -> list[bytes]:
    for kind, data in messages:
        if kind == "binary":
            proto.send_binary(data)
        elif kind == "text":
            proto.send_text(data)
        elif kind == "first":
            proto.send_binary(data, fin=False)
        else:
            proto.send_continuation(data, fin=True)
    return proto.data_to_send()


SIZES = st.sampled_from([0, 1, 125, 126, 65535, BULK_BYTES - 1, BULK_BYTES, BULK_BYTES + 1,
                         300_000, 1 << 20])  # fmt: skip


@st.composite
def messages(draw: st.DrawFn) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for size in draw(st.lists(SIZES, min_size=1, max_size=5)):
        kind = draw(st.sampled_from(["binary", "text", "fragmented"]))
        data = os.urandom(size)
        if kind == "text":
            out.append(("text", data.hex().encode()[:size]))
        elif kind == "fragmented":
            out += [("first", data), ("cont", data[::-1])]
        else:
            wrap = draw(st.sampled_from([bytes, bytearray, memoryview]))
            out.append(("binary", wrap(data)))
    return out


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sent=messages(), client=st.booleans())
def test_the_wire_parses_into_the_same_frames(sent: list[tuple[str, Any]], client: bool) -> None:
    side = Side.CLIENT if client else Side.SERVER
    plain = b"".join(send_all(sender(side, bulk=False), sent))
    bulk_writes = send_all(sender(side, bulk=True), sent)
    assert received(side, b"".join(bulk_writes)) == received(side, plain)
    if not client:  # unmasked: the same bytes exactly
        assert b"".join(bulk_writes) == plain


def test_a_large_frame_is_two_pieces_and_its_payload_is_not_copied_unmasked() -> None:
    payload = os.urandom(BULK_BYTES)
    server = sender(Side.SERVER, bulk=True)
    server.send_binary(payload)
    header, body = server.data_to_send()
    assert body is payload
    assert header == bytes([0x82, 127]) + len(payload).to_bytes(8, "big")
    client = sender(Side.CLIENT, bulk=True)
    client.send_binary(payload)
    header, body = client.data_to_send()
    assert len(header) == 2 + 8 + 4  # with its mask key
    assert header[1] & 0x80
    assert body != payload
    assert apply_mask(body, header[-4:]) == payload


def test_a_reused_buffer_is_copied_when_it_is_not_masked() -> None:
    buf = bytearray(os.urandom(BULK_BYTES))
    server = sender(Side.SERVER, bulk=True)
    server.send_binary(memoryview(buf))
    wire = b"".join(server.data_to_send())
    sent = bytes(buf)
    buf[:] = bytes(len(buf))  # the owner fills it again
    assert received(Side.SERVER, wire) == [(Opcode.BINARY, sent, True)]


def test_a_bulk_writer_gets_what_was_held_then_the_frame() -> None:
    written: list[list[Any]] = []
    server = Protocol(Side.SERVER, state=State.OPEN)
    use_bulk_writes(server, BulkServer, written.append)
    server.send_ping(b"held")  # queued the ordinary way, not yet taken
    payload = os.urandom(BULK_BYTES + 5)
    server.send_binary(payload)
    assert server.data_to_send() == []
    assert len(written) == 1
    assert received(Side.SERVER, b"".join(written[0])) == [
        (Opcode.PING, b"held", True),
        (Opcode.BINARY, payload, True),
    ]
    server.send_text(b"small")  # not bulk: the ordinary way
    assert len(written) == 1
    assert received(Side.SERVER, b"".join(server.data_to_send())) == [(Opcode.TEXT, b"small", True)]


def test_an_extension_that_rewrites_frames_keeps_the_ordinary_path() -> None:
    payload = bytes(BULK_BYTES * 2)  # compresses well: the frame on the wire is small
    client = sender(Side.CLIENT, bulk=True)
    client.extensions = [PerMessageDeflate(False, False, 15, 15)]
    client.send_binary(payload)
    wire = client.data_to_send()
    assert len(wire) == 1
    assert len(wire[0]) < 1000
    server = Protocol(Side.SERVER, state=State.OPEN)
    server.extensions = [PerMessageDeflate(False, False, 15, 15)]
    server.receive_data(wire[0])
    [frame] = server.events_received()
    assert isinstance(frame, Frame)
    assert frame.data == payload


def test_use_bulk_writes_applies_once_and_only_to_its_base() -> None:
    proto = Protocol(Side.SERVER, state=State.OPEN)
    use_bulk_writes(proto, BulkServer)
    use_bulk_writes(proto, BulkServer)
    assert type(proto) is BulkServer

    class Other:
        pass

    with pytest.raises(TypeError):
        use_bulk_writes(Other(), BulkServer)
