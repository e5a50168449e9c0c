"""Playing back terminal recordings (asciicast v2) in the operator's terminal.

Pure parsing (:func:`parse_cast`) plus a timed writer: output events are written at
their recorded times, with idle gaps shortened to ``max_idle`` seconds (as asciinema's
``--idle-time-limit`` does) and the whole scaled by ``speed``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from fleetgate.agentctl.errors import CliError


__all__ = ["CastEvent", "parse_cast", "play"]

CastEvent = tuple[float, str, str]


def parse_cast(data: bytes) -> tuple[dict[str, Any], Iterator[CastEvent]]:
    """The header and the events of a cast file.

    Raises:
        CliError: not an asciicast v2 file.
    """
    lines = data.decode("utf-8", "replace").splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("version") != 2:
        raise CliError("the recording is not an asciicast v2 file")

    def events() -> Iterator[CastEvent]:
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                seconds, code, text = json.loads(line)
                yield float(seconds), str(code), str(text)
            except (ValueError, TypeError):
                raise CliError(f"the recording is damaged at line {number}") from None

    return header, events()


def play(
    data: bytes,
    write: Callable[[str], None],
    *,
    speed: float = 1.0,
    max_idle: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Write the output events of a recording at their pace; returns how many were written."""
    _, events = parse_cast(data)
    previous, written = 0.0, 0
    for seconds, code, text in events:
        if code != "o":
            continue
        gap = min(max(0.0, seconds - previous), max_idle) / speed
        previous = seconds
        if gap > 0:
            sleep(gap)
        write(text)
        written += 1
    return written
