"""asciicast v2 encoding of a terminal session (pure: bytes in, bytes out).

The format (https://docs.asciinema.org/manual/asciicast/v2/) is one JSON header line, then
one JSON array per event: ``[seconds, code, data]`` with ``code`` ``"o"`` (output), ``"i"``
(input) or ``"r"`` (resize, data ``"COLSxROWS"``). ``data`` is text, so the raw bytes of each
direction go through their own incremental UTF-8 decoder: a character split across two
reads is emitted whole with the second one, and invalid bytes become U+FFFD (as asciinema's
own recorder does).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping


__all__ = ["CastEncoder", "ascii_event_line", "event_line", "header_line", "json_string"]


def header_line(
    width: int, height: int, timestamp: int, env: Mapping[str, str], title: str | None = None
) -> bytes:
    """The first line of a cast file."""
    header: dict[str, object] = {
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": timestamp,
        "env": dict(env),
    }
    if title:
        header["title"] = title
    return (json.dumps(header, ensure_ascii=False) + "\n").encode()


_NOT_CONTROL = bytes(range(0x20, 0x100))
"""Deleting these from a byte string leaves its control bytes (0x00-0x1f)."""


def json_string(text: str) -> bytes:
    """``text`` as a JSON string literal, UTF-8 encoded.

    Terminal output is mostly printable text with line ends: escaping those with
    ``bytes.replace`` is about twice as fast as ``json.dumps``; text with other control
    characters (escape sequences) goes through ``json.dumps``.
    """
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not from our decoders, but stay valid
        return json.dumps(text).encode("ascii")
    escaped = _escape(raw)
    if escaped is None:
        return json.dumps(text, ensure_ascii=False).encode("utf-8")
    return b'"' + escaped + b'"'


def _escape(raw: bytes) -> bytes | None:
    """The inside of the JSON string literal of valid UTF-8 ``raw``, or ``None`` when it
    has control characters other than the common ones (left to ``json.dumps``)."""
    escaped = (
        raw.replace(b"\\", b"\\\\")
        .replace(b'"', b'\\"')
        .replace(b"\n", b"\\n")
        .replace(b"\r", b"\\r")
        .replace(b"\t", b"\\t")
    )
    if escaped.translate(None, _NOT_CONTROL):
        return None
    return escaped


def event_line(seconds: float, code: str, data: str) -> bytes:
    """One event line; time with microsecond precision."""
    return b'[%.6f, "%s", %s]\n' % (seconds, code.encode(), json_string(data))


def ascii_event_line(seconds: float, code: str, data: bytes) -> bytes:
    """The same line as ``event_line(seconds, code, data.decode())`` for ASCII ``data``,
    without decoding it to text and encoding it back (the bulk of a ``cat``)."""
    escaped = _escape(data)
    if escaped is None:
        return event_line(seconds, code, data.decode("ascii"))
    return b'[%.6f, "%s", "%s"]\n' % (seconds, code.encode(), escaped)


class CastEncoder:
    """Turns terminal bytes into cast lines, keeping partial UTF-8 sequences for later."""

    def __init__(self) -> None:
        self._decoders = {
            "o": codecs.getincrementaldecoder("utf-8")("replace"),
            "i": codecs.getincrementaldecoder("utf-8")("replace"),
        }

    def output(self, seconds: float, data: bytes) -> bytes:
        """An ``o`` event for bytes the shell printed (empty if only a partial character)."""
        return self._event(seconds, "o", data)

    def input(self, seconds: float, data: bytes) -> bytes:
        """An ``i`` event for bytes the client typed (empty if only a partial character)."""
        return self._event(seconds, "i", data)

    @staticmethod
    def resize(seconds: float, cols: int, rows: int) -> bytes:
        """An ``r`` event."""
        return event_line(seconds, "r", f"{cols}x{rows}")

    def flush(self, seconds: float) -> bytes:
        """Emit what the decoders still hold (a truncated character becomes U+FFFD)."""
        out = b""
        for code, decoder in self._decoders.items():
            text = decoder.decode(b"", final=True)
            if text:
                out += event_line(seconds, code, text)
        return out

    def _event(self, seconds: float, code: str, data: bytes) -> bytes:
        decoder = self._decoders[code]
        if data.isascii() and not decoder.getstate()[0]:
            # Nothing pending from a split character: ASCII bytes are their own text.
            return ascii_event_line(seconds, code, data) if data else b""
        text = decoder.decode(data)
        return event_line(seconds, code, text) if text else b""
