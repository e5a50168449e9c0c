"""Bulk reads of websocket frames: the parser sees exactly the frames, errors and limits it
sees with websockets' own reader, however the bytes are split by the network."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from websockets.exceptions import PayloadTooBig
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State
from websockets.streams import StreamReader

from fleetgate.shared.files import bulkreads
from fleetgate.shared.files.bulkreads import BULK_BYTES, BulkReadsMixin, use_bulk_reads


class BulkReader(BulkReadsMixin, StreamReader):
    pass


class KeptBufferReader(BulkReadsMixin, StreamReader):
    """A server's reader (the control plane's), reading large payloads into one buffer."""

    reuse_payload = True


def protocol(
    side: Side, *, bulk: bool, max_size: int | None = None, reader: type = BulkReader
) -> Protocol:
    proto = Protocol(side, state=State.OPEN, max_size=max_size)
    if bulk:
        use_bulk_reads(proto.reader, reader)
    return proto


def frames(proto: Protocol) -> list[Frame]:
    """The frames parsed since the last call (a bare Protocol parses nothing else)."""
    events = proto.events_received()
    assert all(isinstance(e, Frame) for e in events)
    return [e for e in events if isinstance(e, Frame)]


def feed(proto: Protocol, wire: bytes, cuts: list[int]) -> list[tuple[Opcode, bytes, bool]]:
    """Feed ``wire`` split at ``cuts``; the frames parsed, as (opcode, payload, fin)."""
    events = []
    start = 0
    for end in [*sorted(set(cuts)), len(wire)]:
        if end <= start:
            continue
        proto.receive_data(wire[start:end])
        start = end
        events += [(f.opcode, bytes(f.data), f.fin) for f in frames(proto)]
    return events


SIZES = st.sampled_from([0, 1, 125, 126, 65535, BULK_BYTES - 1, BULK_BYTES, BULK_BYTES + 1,
                         300_000, 1 << 20])  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(SIZES, min_size=1, max_size=6),
    client_sent=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=3 << 20), max_size=40),
    piece=st.sampled_from([1 << 10, 64 << 10, 256 << 10, 4 << 20]),
)
def test_frames_parse_as_without_bulk_reads(
    sizes: list[int], client_sent: bool, cuts: list[int], piece: int
) -> None:
    """Any frames, cut anywhere (random cuts plus regular reads of ``piece`` bytes)."""
    frames = [
        Frame(Opcode.BINARY if i % 3 else Opcode.TEXT, os.urandom(n) if i % 3 else b"x" * n)
        for i, n in enumerate(sizes)
    ]
    wire = b"".join(f.serialize(mask=client_sent) for f in frames)
    splits = [c for c in cuts if c < len(wire)] + list(range(piece, len(wire), piece))
    receiver = Side.SERVER if client_sent else Side.CLIENT
    expected = [(f.opcode, f.data, f.fin) for f in frames]
    assert feed(protocol(receiver, bulk=False), wire, splits) == expected
    bulk = protocol(receiver, bulk=True)
    assert feed(bulk, wire, splits) == expected
    assert bulk.reader.buffer == b""


def feed_in_place(proto: Protocol, wire: bytes, piece: int) -> list[tuple[Opcode, bytes, bool]]:
    """Feed ``wire`` as a buffered transport would: into the reader's room while a large
    payload is pending (``bulk_room``), else ``piece`` bytes at a time."""
    reader = proto.reader
    assert isinstance(reader, KeptBufferReader)
    events, start = [], 0
    while start < len(wire):
        room = reader.bulk_room()
        if room is not None:
            taken = min(len(room), piece, len(wire) - start)
            room[:taken] = wire[start : start + taken]
            room.release()
            reader.bulk_filled(taken)
            proto.receive_data(b"")
        else:
            taken = min(piece, len(wire) - start)
            proto.receive_data(wire[start : start + taken])
        start += taken
        events += [(f.opcode, bytes(f.data), f.fin) for f in frames(proto)]
    return events


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(SIZES, min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=3 << 20), max_size=40),
    piece=st.sampled_from([1 << 10, 64 << 10, 256 << 10, 4 << 20]),
)
def test_a_servers_kept_buffer_parses_the_same(
    sizes: list[int], cuts: list[int], piece: int
) -> None:
    """A client's (masked) frames through a reader that keeps its buffer: fed as pieces,
    and received in place, the frames are those websockets parses itself, each its own
    copy (the kept buffer is filled again by the next frame)."""
    frames = [Frame(Opcode.BINARY, os.urandom(n)) for n in sizes]
    wire = b"".join(f.serialize(mask=True) for f in frames)
    splits = [c for c in cuts if c < len(wire)] + list(range(piece, len(wire), piece))
    expected = [(f.opcode, f.data, f.fin) for f in frames]
    kept = protocol(Side.SERVER, bulk=True, reader=KeptBufferReader)
    assert feed(kept, wire, splits) == expected
    in_place = protocol(Side.SERVER, bulk=True, reader=KeptBufferReader)
    assert feed_in_place(in_place, wire, piece) == expected
    assert in_place.reader.buffer == b""


def test_an_idle_connection_keeps_no_payload_buffer() -> None:
    """Once a large frame is parsed, its buffer goes back to the thread's kept ones (the
    next large frame, of any connection, reuses it); the connection holds none while idle,
    so 5,000 agents' backhauls that once sent a large report hold nothing for it."""
    payload = os.urandom(BULK_BYTES * 2)
    first = protocol(Side.SERVER, bulk=True, reader=KeptBufferReader)
    wire = Frame(Opcode.BINARY, payload).serialize(mask=True)
    first.receive_data(wire[:100])  # the payload arrives after its read began: a bulk read
    first.receive_data(wire[100:])
    assert [bytes(f.data) for f in frames(first)] == [payload]
    assert first.reader._target is None  # type: ignore[attr-defined]
    kept: list[bytearray] = bulkreads._kept.buffers
    assert [len(b) for b in kept][-1] == len(payload)
    buffer = kept[-1]
    second = protocol(Side.SERVER, bulk=True, reader=KeptBufferReader)
    other = os.urandom(len(payload))
    wire = Frame(Opcode.BINARY, other).serialize(mask=True)
    second.receive_data(wire[:100])
    second.receive_data(wire[100 : len(wire) - 1])
    assert second.reader._target is buffer  # type: ignore[attr-defined]  # taken while its payload arrives
    assert buffer not in kept
    second.receive_data(wire[len(wire) - 1 :])
    assert [bytes(f.data) for f in frames(second)] == [other]
    assert second.reader._target is None  # type: ignore[attr-defined]
    assert kept[-1] is buffer
    assert len(kept) <= bulkreads.KEPT_BUFFERS


def test_a_frame_in_one_piece_with_the_next_frames_head() -> None:
    """The bytes after a bulk frame that came in its last piece start the next frame."""
    big, small = os.urandom(BULK_BYTES * 3), b"next"
    wire = Frame(Opcode.BINARY, big).serialize(mask=False)
    tail = Frame(Opcode.BINARY, small).serialize(mask=False)
    proto = protocol(Side.CLIENT, bulk=True)
    proto.receive_data(wire[:100])
    proto.receive_data(wire[100:] + tail[:3])
    assert [bytes(f.data) for f in frames(proto)] == [big]
    proto.receive_data(tail[3:])
    assert [bytes(f.data) for f in frames(proto)] == [small]


@pytest.mark.parametrize("bulk", [False, True])
def test_the_stream_ending_inside_a_bulk_frame_fails_the_same(bulk: bool) -> None:
    """EOF in the middle of a large frame: the connection fails as without bulk reads."""
    wire = Frame(Opcode.BINARY, os.urandom(BULK_BYTES * 2)).serialize(mask=False)
    proto = protocol(Side.CLIENT, bulk=bulk)
    proto.receive_data(wire[: BULK_BYTES + 10])
    proto.receive_eof()
    assert proto.events_received() == []
    assert proto.state is State.CLOSED
    assert proto.close_rcvd is None
    assert isinstance(proto.parser_exc, EOFError)


@pytest.mark.parametrize("bulk", [False, True])
def test_a_frame_over_max_size_is_refused_before_its_bytes(bulk: bool) -> None:
    """The size limit is checked on the header, before the payload is gathered."""
    wire = Frame(Opcode.BINARY, b"y" * (BULK_BYTES * 2)).serialize(mask=False)
    proto = protocol(Side.CLIENT, bulk=bulk, max_size=BULK_BYTES)
    proto.receive_data(wire[:20])
    assert isinstance(proto.parser_exc, PayloadTooBig)
    assert proto.state is State.CLOSING
    proto.receive_data(wire[20:])  # discarded
    assert proto.events_received() == []


def test_use_bulk_reads_applies_once_and_only_to_its_base() -> None:
    reader = StreamReader()
    use_bulk_reads(reader, BulkReader)
    use_bulk_reads(reader, BulkReader)
    assert type(reader) is BulkReader

    class Other:
        pass

    with pytest.raises(TypeError, match="does not extend"):
        use_bulk_reads(Other(), BulkReader)
