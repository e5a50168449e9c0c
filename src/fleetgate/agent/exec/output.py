"""Turning a command's raw output bytes into text: streamed chunks and a capped result.

Both classes are plain synchronous state machines so they can be tested without an
event loop. Commands may print anything, so bytes that are not UTF-8 decode with
``errors="replace"``; valid multibyte characters are never split between two pieces
of text.
"""

from __future__ import annotations


__all__ = ["HeadTailCapture", "OutputChunker", "complete_prefix_length"]


def _sequence_length(lead: int) -> int:
    """Length of the UTF-8 sequence a lead byte starts; 1 for ASCII or invalid bytes."""
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 1


def _is_continuation(byte: int) -> bool:
    return 0x80 <= byte <= 0xBF


def complete_prefix_length(data: bytes | bytearray, end: int | None = None) -> int:
    """Return the longest length ``<= end`` that does not cut a UTF-8 sequence in two.

    Only a sequence that could still become valid with more bytes counts as cut; invalid
    bytes are left where they are (they decode to U+FFFD either way).

    Args:
        data: the bytes.
        end: the wanted cut position, ``len(data)`` by default.

    Returns:
        ``end``, or the start of the incomplete sequence that straddles it.
    """
    if end is None:
        end = len(data)
    # A sequence is at most 4 bytes, so its lead byte is within the last 4 positions.
    for start in range(end - 1, max(end - 4, 0) - 1, -1):
        byte = data[start]
        if not _is_continuation(byte):
            return start if start + _sequence_length(byte) > end else end
    return end


class OutputChunker:
    """Cut a byte stream into text chunks of about ``chunk_bytes`` bytes.

    A chunk is emitted as soon as ``chunk_bytes`` bytes are buffered; it is at most
    ``chunk_bytes`` long, shortened to end on a character boundary. The buffer never
    holds more than ``chunk_bytes - 1`` bytes between calls.

    Args:
        chunk_bytes: the target chunk size in bytes (at least 4).
    """

    def __init__(self, chunk_bytes: int) -> None:
        if chunk_bytes < 4:
            raise ValueError("chunk_bytes must be at least 4 (one UTF-8 character)")
        self._chunk_bytes = chunk_bytes
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes buffered and not yet returned as text."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[str]:
        """Add bytes and return the chunks that are now complete (possibly none)."""
        self._buffer += data
        chunks: list[str] = []
        while len(self._buffer) >= self._chunk_bytes:
            cut = complete_prefix_length(self._buffer, self._chunk_bytes)
            chunks.append(self._take(cut))
        return chunks

    def flush(self, *, final: bool = False) -> str:
        """Return everything buffered as text (``""`` if nothing is).

        Args:
            final: the stream ended; also decode an incomplete trailing UTF-8 sequence
                (as U+FFFD) instead of keeping it for the next chunk.
        """
        cut = len(self._buffer) if final else complete_prefix_length(self._buffer)
        return self._take(cut)

    def _take(self, cut: int) -> str:
        text = self._buffer[:cut].decode("utf-8", errors="replace")
        del self._buffer[:cut]
        return text


class HeadTailCapture:
    """Keep the first and last bytes of a stream, within a fixed memory budget.

    The first ``cap_bytes // 2`` bytes are kept as they arrive, then a rolling window
    of the last ``cap_bytes - cap_bytes // 2`` bytes. Memory stays bounded by
    ``cap_bytes`` whatever the stream's size.

    Args:
        cap_bytes: bytes kept in total (head plus tail).
    """

    def __init__(self, cap_bytes: int) -> None:
        if cap_bytes < 2:
            raise ValueError("cap_bytes must be at least 2")
        self._head_cap = cap_bytes // 2
        self._tail_cap = cap_bytes - self._head_cap
        self._head = bytearray()
        self._tail = bytearray()
        self._total = 0

    @property
    def total_bytes(self) -> int:
        """Bytes seen so far, kept or not."""
        return self._total

    @property
    def truncated(self) -> bool:
        """Whether bytes were dropped from the middle."""
        return self._total > len(self._head) + len(self._tail)

    def feed(self, data: bytes) -> None:
        """Add bytes to the stream."""
        self._total += len(data)
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if len(data) >= self._tail_cap:
            self._tail[:] = data[-self._tail_cap :]
        elif data:
            self._tail += data
            # Deleting from the front of a bytearray is cheap (CPython moves its start).
            excess = len(self._tail) - self._tail_cap
            if excess > 0:
                del self._tail[:excess]

    def result(self) -> tuple[str, bool]:
        """Return ``(text, truncated)``.

        A truncated text is the head, a marker line ``\\n... [N bytes truncated] ...\\n``
        and the tail, where both ends are trimmed to whole UTF-8 characters and ``N``
        counts every byte left out.
        """
        if not self.truncated:
            return bytes(self._head + self._tail).decode("utf-8", errors="replace"), False
        head_end = complete_prefix_length(self._head)
        # Skip the continuation bytes of a character whose start was dropped (at most 3).
        tail_start = 0
        while tail_start < min(3, len(self._tail)) and _is_continuation(self._tail[tail_start]):
            tail_start += 1
        dropped = self._total - head_end - (len(self._tail) - tail_start)
        text = (
            self._head[:head_end].decode("utf-8", errors="replace")
            + f"\n... [{dropped} bytes truncated] ...\n"
            + self._tail[tail_start:].decode("utf-8", errors="replace")
        )
        return text, True
