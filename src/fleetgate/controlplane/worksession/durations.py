"""Session durations: ``1h``, ``2h``, ``90m``, ``1h30m``, ``45s``. No I/O."""

from __future__ import annotations

import re


__all__ = ["parse_duration"]

_PART = re.compile(r"(\d+)([hms])")
_UNITS = {"h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> int:
    """Seconds in ``text`` (hours, minutes, seconds parts, in that order, each optional).

    Raises:
        ValueError: not a duration, or zero.
    """
    value = text.strip().lower()
    pos, total, last = 0, 0, -1
    for match in _PART.finditer(value):
        order = "hms".index(match.group(2))
        if match.start() != pos or order <= last:
            raise ValueError(f"not a duration: {text!r} (expected e.g. 1h, 90m, 1h30m)")
        total += int(match.group(1)) * _UNITS[match.group(2)]
        pos, last = match.end(), order
    if pos != len(value) or pos == 0:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 1h, 90m, 1h30m)")
    if total <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return total
