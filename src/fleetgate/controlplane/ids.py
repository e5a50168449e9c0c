"""Random UUIDs with one ``getrandom`` call per 256 of them.

Under load, every system call of the event loop thread may have to wait for the GIL
held by the database thread; drawing randomness in bulk keeps that to one in 256.
"""

from __future__ import annotations

import os
import uuid


__all__ = ["new_uuid"]

_BATCH = 256
_pool = b""
_offset = 0


def new_uuid() -> uuid.UUID:
    """A random (version 4) UUID, from the OS's CSPRNG."""
    global _pool, _offset
    if _offset >= len(_pool):
        _pool = os.urandom(16 * _BATCH)
        _offset = 0
    raw = _pool[_offset : _offset + 16]
    _offset += 16
    return uuid.UUID(bytes=raw, version=4)
