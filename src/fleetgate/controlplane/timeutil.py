"""Timestamps as integer microseconds since the epoch (UTC), the storage format.

Integers keep the agent's timestamps exactly as sent and sort correctly in SQL.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


__all__ = ["format_human", "from_us", "iso", "iso_or_none", "now_us", "to_us"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_us() -> int:
    """The current wall-clock time in microseconds."""
    return time.time_ns() // 1000


def to_us(dt: datetime) -> int:
    """Convert a datetime (naive means UTC) to microseconds since the epoch."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    """Convert microseconds since the epoch to an aware UTC datetime."""
    seconds, micros = divmod(us, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)


def iso(us: int) -> str:
    """ISO 8601 with microseconds and a ``Z`` suffix: ``2024-01-15T10:30:44.000000Z``."""
    return from_us(us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_or_none(us: int | None) -> str | None:
    """:func:`iso`, passing ``None`` through."""
    return None if us is None else iso(us)


def format_human(us: int) -> str:
    """``2024-01-15 10:30:45`` (UTC), for status messages."""
    return from_us(us).strftime("%Y-%m-%d %H:%M:%S")
