"""OutputChunker and HeadTailCapture: pure byte-to-text handling."""

from __future__ import annotations

import pytest

from fleetgate.agent.exec.exitstatus import ExitStatus, exit_status
from fleetgate.agent.exec.output import HeadTailCapture, OutputChunker, complete_prefix_length


EURO = "€".encode()  # 3 bytes: e2 82 ac
CLEF = "𝄞".encode()  # 4 bytes


def test_chunker_emits_exact_chunks_for_ascii() -> None:
    chunker = OutputChunker(8)
    assert chunker.feed(b"abc") == []
    assert chunker.feed(b"defghijklmnopqrst") == ["abcdefgh", "ijklmnop"]
    assert chunker.pending == 4
    assert chunker.flush() == "qrst"
    assert chunker.pending == 0
    assert chunker.flush() == ""


def test_chunker_emits_when_exactly_chunk_bytes_are_buffered() -> None:
    chunker = OutputChunker(4)
    assert chunker.feed(b"abcd") == ["abcd"]
    assert chunker.pending == 0


def test_chunker_never_splits_a_multibyte_character() -> None:
    chunker = OutputChunker(8)
    # 6 ASCII bytes + a 3-byte char straddles the 8-byte boundary: cut before it.
    chunks = chunker.feed(b"abcdef" + EURO + b"gh")
    assert chunks == ["abcdef"]
    assert chunker.flush() == "€gh"


def test_chunker_joins_a_character_split_across_feeds() -> None:
    chunker = OutputChunker(16)
    assert chunker.feed(b"x" + CLEF[:1]) == []
    assert chunker.feed(CLEF[1:3]) == []
    # The incomplete sequence stays buffered on a non-final flush.
    assert chunker.flush() == "x"
    assert chunker.pending == 3
    assert chunker.feed(CLEF[3:]) == []
    assert chunker.flush() == "𝄞"


def test_chunker_round_trips_every_split_point() -> None:
    text = "aé€𝄞z" * 40
    data = text.encode()
    for size in (4, 5, 7, 16):
        for split in range(len(data)):
            chunker = OutputChunker(size)
            chunks = chunker.feed(data[:split]) + chunker.feed(data[split:])
            chunks.append(chunker.flush(final=True))
            assert "".join(chunks) == text
            assert all(len(c.encode()) <= size for c in chunks)


def test_final_flush_replaces_an_incomplete_sequence() -> None:
    chunker = OutputChunker(16)
    chunker.feed(b"ok" + EURO[:2])
    assert chunker.flush(final=True) == "ok\ufffd"
    assert chunker.pending == 0


def test_invalid_bytes_decode_as_replacement_and_do_not_stall() -> None:
    chunker = OutputChunker(4)
    # Lone continuation bytes are not a sequence to wait for: they are cut and replaced.
    assert chunker.feed(b"\x80\x80\x80\x80\xff") == ["\ufffd" * 4]
    assert chunker.flush() == "\ufffd"


def test_chunker_rejects_tiny_chunks() -> None:
    with pytest.raises(ValueError):
        OutputChunker(3)


@pytest.mark.parametrize(
    ("data", "end", "expected"),
    [
        (b"abc", 3, 3),
        (b"ab" + EURO, 4, 2),
        (b"ab" + EURO, 5, 5),
        (CLEF, 3, 0),
        (CLEF, 4, 4),
        (b"\x80\x80\x80\x80", 4, 4),
    ],
)
def test_complete_prefix_length(data: bytes, end: int, expected: int) -> None:
    assert complete_prefix_length(data, end) == expected


def test_capture_below_cap_is_not_truncated() -> None:
    capture = HeadTailCapture(1024)
    capture.feed(b"hello ")
    capture.feed("wörld".encode())
    assert capture.result() == ("hello wörld", False)
    assert capture.total_bytes == 12
    assert not capture.truncated


def test_capture_exactly_at_cap_is_not_truncated() -> None:
    capture = HeadTailCapture(1024)
    capture.feed(b"a" * 600)
    capture.feed(b"b" * 424)
    assert capture.result() == ("a" * 600 + "b" * 424, False)


def test_capture_of_5_mib_keeps_exact_head_and_tail() -> None:
    data = b"".join(b"%09d\n" % i for i in range(524_288))  # 5 MiB of distinct lines
    assert len(data) == 5 * 1024 * 1024
    cap = 1024 * 1024
    capture = HeadTailCapture(cap)
    for start in range(0, len(data), 65_536 - 7):  # odd block size: splits lines
        capture.feed(data[start : start + 65_536 - 7])
    text, truncated = capture.result()
    half = cap // 2
    dropped = len(data) - cap
    assert truncated
    assert capture.total_bytes == len(data)
    assert text == (
        data[:half].decode() + f"\n... [{dropped} bytes truncated] ...\n" + data[-half:].decode()
    )


def test_capture_single_huge_feed() -> None:
    capture = HeadTailCapture(10)
    capture.feed(b"0123456789" * 100)
    assert capture.result() == ("01234\n... [990 bytes truncated] ...\n56789", True)


def test_capture_cuts_head_and_tail_on_character_boundaries() -> None:
    capture = HeadTailCapture(8)
    # head = b"ab" + first 2 bytes of €; tail = last 2 bytes of € + b"yz"
    capture.feed(b"ab" + EURO + b"-" * 10 + EURO + b"yz")
    text, truncated = capture.result()
    assert truncated
    # The partial characters are dropped from both ends and counted as truncated.
    assert text == f"ab\n... [{3 + 10 + 3} bytes truncated] ...\nyz"


@pytest.mark.parametrize(
    ("returncode", "timed_out_after", "expected"),
    [
        (0, None, ExitStatus(0)),
        (3, None, ExitStatus(3)),
        (-9, None, ExitStatus(137, None, "killed by signal SIGKILL")),
        (-200, None, ExitStatus(328, None, "killed by signal signal 200")),
        (-15, 2.04, ExitStatus(124, "timeout", "timed out after 2.0 s")),
    ],
)
def test_exit_status_follows_shell_conventions(
    returncode: int, timed_out_after: float | None, expected: ExitStatus
) -> None:
    assert exit_status(returncode, timed_out_after) == expected
