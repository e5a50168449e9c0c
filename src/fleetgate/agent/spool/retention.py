"""How long the inbox remembers finished commands: a pure policy, no I/O.

A finished command is remembered so that a late redelivery of its id is recognised (and
answered with its stored result instead of running it again). Memory and disk are
bounded three ways: at most ``max_entries`` finished commands, at most ``max_bytes`` of
stored results, none older than ``max_age`` seconds. The oldest go first. The control
plane only redelivers a command it has no report for, so in practice an id is asked
about again minutes after it finished, never weeks.

Unconfirmed *reports* are not subject to this policy: dropping one would lose a result.
They are bounded by ``limits.outbox_max_reports`` through backpressure instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from uuid import UUID


__all__ = ["Eviction", "Retention", "RetentionReason"]

RetentionReason = Literal["count", "bytes", "age"]


@dataclass(frozen=True)
class Retention:
    """Bounds on the finished commands the inbox remembers."""

    max_entries: int = 100_000
    max_bytes: int = 256 * 1024 * 1024
    max_age: float = 14 * 24 * 3600.0

    def __post_init__(self) -> None:
        if self.max_entries < 1 or self.max_bytes < 0 or self.max_age <= 0:
            raise ValueError("retention bounds must be positive")

    def reason_to_drop(
        self, *, entries: int, total_bytes: int, oldest_at: float, now: float
    ) -> RetentionReason | None:
        """Why the oldest entry must go, given the current totals; None to keep it.

        ``oldest_at`` and ``now`` are seconds on the same (wall) clock.
        """
        if entries > self.max_entries:
            return "count"
        if total_bytes > self.max_bytes:
            return "bytes"
        if now - oldest_at > self.max_age:
            return "age"
        return None


@dataclass
class Eviction:
    """Finished commands the inbox just forgot, and why (for the log line and the store)."""

    forgotten: list[UUID] = field(default_factory=list)
    reasons: dict[RetentionReason, int] = field(default_factory=dict)

    def add(self, key: UUID, reason: RetentionReason) -> None:
        """Record one forgotten entry."""
        self.forgotten.append(key)
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def __bool__(self) -> bool:
        return bool(self.forgotten)
