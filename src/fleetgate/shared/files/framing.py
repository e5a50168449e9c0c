"""Framing of the pipes between the agent and its file worker (pure).

The agent relays websocket frames to the worker's stdin and the worker's stdout back to
the websocket. A pipe is a byte stream, so each frame is prefixed with a 5-byte header:
one kind byte (``D`` = payload bytes, ``T`` = one JSON control object in UTF-8) and the
payload length as a big-endian uint32. Lengths are bounded by :data:`MAX_FRAME_BYTES`, so a
reader never allocates more than that for one frame.

Control objects are parsed with the standard library's ``json`` (which encodes them too),
not ``fleetgate.shared.jsontext``: the worker starts once per transfer, and importing
``pydantic_core`` for its few flat control frames cost 20-30 ms of its start. A frame is
at most :data:`MAX_TEXT_BYTES`, so deep nesting ends in ``RecursionError``, which is
caught and refused like any other malformed frame.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from fleetgate.shared.errors import TransferError


__all__ = [
    "DATA",
    "HEADER",
    "MAX_FRAME_BYTES",
    "TEXT",
    "decode_header",
    "decode_text",
    "encode_header",
    "encode_text",
]

HEADER = struct.Struct(">cI")
DATA = b"D"
TEXT = b"T"
MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Hard ceiling of one frame: chunk sizes are configured well below it."""

MAX_TEXT_BYTES = 64 * 1024
"""A control object is small; anything larger is a protocol error."""


def encode_header(kind: bytes, length: int) -> bytes:
    """The 5-byte header of a frame of ``kind`` carrying ``length`` bytes."""
    if length > MAX_FRAME_BYTES:
        raise TransferError("too_large", f"a frame of {length} bytes exceeds the limit")
    return HEADER.pack(kind, length)


def decode_header(header: bytes) -> tuple[bytes, int]:
    """``(kind, length)`` of a frame header.

    Raises:
        TransferError: ``malformed`` (unknown kind) or ``too_large``.
    """
    kind, length = HEADER.unpack(header)
    if kind not in (DATA, TEXT):
        raise TransferError("malformed", f"unknown frame kind {kind!r}")
    limit = MAX_TEXT_BYTES if kind == TEXT else MAX_FRAME_BYTES
    if length > limit:
        raise TransferError("too_large", f"a frame of {length} bytes exceeds the limit")
    return kind, length


def encode_text(obj: dict[str, Any]) -> bytes:
    """A whole text frame (header included) carrying ``obj`` as compact JSON."""
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    return encode_header(TEXT, len(payload)) + payload


def decode_text(payload: bytes | str) -> dict[str, Any]:
    """The JSON object of a text frame.

    Raises:
        TransferError: ``malformed`` when it is not one JSON object with a string ``type``.
    """
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise TransferError("malformed", f"a control frame is not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise TransferError("malformed", "a control frame must be an object with a 'type'")
    return obj
