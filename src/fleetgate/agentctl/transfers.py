"""Pure helpers of `agentctl cp` and `edit`: locations, transfer ids, progress figures.

Nothing here touches the network or the disk, so the rules are unit-tested directly.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any


__all__ = [
    "Local",
    "Progress",
    "Remote",
    "local_part_name",
    "parse_location",
    "summary",
    "transfer_id",
]

_SERVER = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class Remote:
    """``SERVER:/path``."""

    server: str
    path: str

    @property
    def name(self) -> str:
        """The last component of the path ('' for '/')."""
        return self.path.rstrip("/").rpartition("/")[2]


@dataclass(frozen=True)
class Local:
    """A path on this machine."""

    path: str


def parse_location(text: str) -> Remote | Local:
    """``SERVER:/abs/path`` is remote; anything else is local.

    A word is remote only when the part before the first ``:`` is a plain server name (no
    ``/``) and the part after it is an absolute path, so ``./a:b`` and ``C:x`` stay local.
    """
    server, sep, path = text.partition(":")
    if sep and _SERVER.fullmatch(server) and path.startswith("/"):
        return Remote(server, path)
    return Local(text)


def transfer_id(*parts: object) -> str:
    """A deterministic transfer id (32 hex digits) from what identifies a transfer.

    The same upload of the same unchanged file to the same place gets the same id, so a
    second attempt (after a dropped connection or a killed agentctl) resumes the first.
    """
    text = "\0".join(str(p) for p in parts)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def local_part_name(name: str, tid: str) -> str:
    """The temporary name a download writes beside its target (resumable, hidden)."""
    stem = name if len(name.encode("utf-8", "surrogateescape")) <= 160 else tid
    return f".{stem}.{tid}.agentctl-part"


@dataclass
class Progress:
    """Bytes moved over time: rate over a sliding window and the time left.

    Attributes:
        total: the expected byte count, or None when unknown (a directory stream).
        window: seconds the rate is averaged over.
    """

    total: int | None
    start: float
    done: int = 0
    window: float = 3.0
    _samples: list[tuple[float, int]] = field(default_factory=list)

    def update(self, done: int, now: float) -> None:
        """Record that ``done`` bytes are through at time ``now``."""
        self.done = done
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.pop(0)

    def rate(self) -> float:
        """Bytes per second over the window (0 before two samples)."""
        if len(self._samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def eta(self) -> float | None:
        """Seconds left at the current rate, or None when unknown."""
        rate = self.rate()
        if self.total is None or rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / rate)


def summary(
    *,
    op: str,
    server: str,
    remote: str,
    local: str,
    size: int,
    seconds: float,
    sha256: str,
    resumed_from: int = 0,
    recursive: bool = False,
) -> dict[str, Any]:
    """The ``--output json`` document of a finished transfer."""
    moved = size - resumed_from
    return {
        "ok": True,
        "op": op,
        "server": server,
        "remote_path": remote,
        "local_path": local,
        "recursive": recursive,
        "bytes": size,
        "bytes_transferred": moved,
        "resumed_from": resumed_from,
        "seconds": round(seconds, 3),
        "bytes_per_second": round(moved / seconds) if seconds > 0 else None,
        "sha256": sha256,
    }
