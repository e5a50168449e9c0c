"""Time sources, in one place so tests can reason about them.

Wall-clock timestamps are what operators read (``delivered_at`` and friends); durations
are always measured on the monotonic clock so that an NTP step cannot make a command
look like it ran for minus three seconds.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


__all__ = ["monotonic", "utcnow"]


def utcnow() -> datetime:
    """Return the current wall-clock time as an aware UTC datetime."""
    return datetime.now(UTC)


def monotonic() -> float:
    """Return seconds on a clock that never goes backwards."""
    return time.monotonic()
