"""The size cap of the local recording spool (pure bookkeeping).

All recordings on disk (running sessions and those waiting to be shipped) share one byte
budget. A writer takes bytes from it before writing; shipped and deleted files give theirs
back. What happens when a write does not fit is the terminal's policy (``stop`` recording
or ``refuse``), not this class's.
"""

from __future__ import annotations


__all__ = ["SpoolQuota"]


class SpoolQuota:
    """Bytes used by recordings against a fixed cap."""

    def __init__(self, max_bytes: int, used: int = 0) -> None:
        if max_bytes < 0 or used < 0:
            raise ValueError("sizes must not be negative")
        self.max_bytes = max_bytes
        self.used = used
        self._refused = False

    @property
    def full(self) -> bool:
        """The cap is reached, or a write was refused since space was last given back."""
        return self._refused or self.used >= self.max_bytes

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) when they do not fit."""
        if self.used + size > self.max_bytes:
            self._refused = True
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        """A recording of ``size`` bytes left the spool."""
        self.used = max(0, self.used - size)
        self._refused = False
