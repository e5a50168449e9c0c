"""The bookkeeping of one terminal, without I/O: who owns it, whether a client is
attached, when a detached shell expires, and the output waiting to be sent.

Times are monotonic seconds passed in by the caller, so every rule is testable without a
clock or an event loop.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from fleetgate.agent.errors import ChannelRefused


__all__ = ["Owner", "PendingOutput", "Phase", "TerminalState"]


class Phase(enum.Enum):
    """Where a terminal is in its life."""

    ATTACHED = "attached"
    """A client's channel is connected; output flows to it."""
    DETACHED = "detached"
    """The channel dropped; the shell runs on until the grace deadline."""
    CLOSED = "closed"
    """The shell is being (or has been) ended; nothing can attach any more."""


@dataclass(frozen=True, slots=True)
class Owner:
    """Who may attach to a terminal: the same account, work session and assignee."""

    username: str
    work_session: str | None
    assignee: str | None


class TerminalState:
    """The attach/detach/close state machine of one terminal.

    A new terminal starts attached. Losing the channel detaches it with a deadline of
    ``grace`` seconds; attaching again before the deadline (same owner) resumes it. A
    second attach while attached takes over (the previous channel is usually a half-open
    link the agent has not noticed yet). Closing is final.
    """

    def __init__(self, owner: Owner, grace: float, now: float) -> None:
        self.owner = owner
        self.grace = grace
        self.phase = Phase.ATTACHED
        self.deadline: float | None = None
        self.attaches = 1
        self.close_reason: str | None = None
        self.created_at = now

    def check_attach(self, owner: Owner) -> None:
        """Refuse an attach by anyone but the owner, or to a closed terminal.

        Raises:
            ChannelRefused: ``terminal_closed`` or ``forbidden``.
        """
        if self.phase is Phase.CLOSED:
            raise ChannelRefused("terminal_closed", "the terminal has ended")
        if owner != self.owner:
            raise ChannelRefused("forbidden", "the terminal belongs to another user or session")

    def attach(self, owner: Owner, now: float) -> bool:
        """Attach a new channel; returns True when another channel was attached (take-over).

        Raises:
            ChannelRefused: see :meth:`check_attach`; also when the deadline has passed.
        """
        self.check_attach(owner)
        if self.expired(now):
            raise ChannelRefused("terminal_closed", "the terminal's detach grace has expired")
        took_over = self.phase is Phase.ATTACHED
        self.phase = Phase.ATTACHED
        self.deadline = None
        self.attaches += 1
        return took_over

    def detach(self, now: float) -> float | None:
        """The channel dropped: start the grace period; returns the deadline (None if closed)."""
        if self.phase is Phase.CLOSED:
            return None
        self.phase = Phase.DETACHED
        self.deadline = now + self.grace
        return self.deadline

    def expired(self, now: float) -> bool:
        """Whether a detached terminal outlived its grace."""
        return self.phase is Phase.DETACHED and self.deadline is not None and now >= self.deadline

    def close(self, reason: str) -> bool:
        """Mark the terminal closed; False when it already was (the first reason wins)."""
        if self.phase is Phase.CLOSED:
            return False
        self.phase = Phase.CLOSED
        self.close_reason = reason
        self.deadline = None
        return True


class PendingOutput:
    """Shell output read from the PTY and not yet sent, bounded in both phases.

    Attached: the reader stops when ``high`` bytes wait (:meth:`should_pause`) and resumes
    below ``high // 2``, so a fast writer blocks in the kernel instead of growing memory.
    Detached: nothing is sent, the reader keeps going, and only the last ``ring`` bytes are
    kept (:meth:`trim`) to be replayed on reattach.
    """

    def __init__(self, high: int, ring: int) -> None:
        if high <= 0 or ring <= 0:
            raise ValueError("buffer bounds must be positive")
        self.high = high
        self.ring = ring
        self.dropped = 0
        # The reads as they came (each one batch of the PTY reader), so that a batch is
        # sent as it is instead of being copied into and out of one growing buffer.
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def feed(self, data: bytes) -> None:
        """Append bytes read from the PTY."""
        if data:
            self._chunks.append(data)
            self._size += len(data)

    def take(self, limit: int) -> bytes:
        """Remove and return up to ``limit`` bytes from the front."""
        chunks = self._chunks
        if not chunks or limit <= 0:
            return b""
        first = chunks[0]
        if len(first) >= limit or len(chunks) == 1:
            return self._pop_front(limit)
        parts: list[bytes] = []
        room = limit
        while chunks and room > 0:
            part = self._pop_front(room)
            parts.append(part)
            room -= len(part)
        return b"".join(parts)

    def _pop_front(self, limit: int) -> bytes:
        first = self._chunks[0]
        if len(first) <= limit:
            self._chunks.popleft()
            self._size -= len(first)
            return first
        self._chunks[0] = first[limit:]
        self._size -= limit
        return first[:limit]

    def trim(self) -> int:
        """Keep only the last ``ring`` bytes; returns how many were dropped now."""
        excess = self._size - self.ring
        if excess <= 0:
            return 0
        left = excess
        while left > 0:
            left -= len(self._pop_front(left))
        self.dropped += excess
        return excess

    def should_pause(self) -> bool:
        """Attached and this full: stop reading the PTY."""
        return self._size >= self.high

    def should_resume(self) -> bool:
        """Attached and drained below the low mark: read again."""
        return self._size < self.high // 2
