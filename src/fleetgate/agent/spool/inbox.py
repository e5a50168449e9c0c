"""Command ids the agent has seen, so that a command delivered twice runs once.

Pure bookkeeping, no I/O: the dispatcher mirrors every change into the SQLite store
(:mod:`fleetgate.agent.spool.store`), and at start the inbox is rebuilt from it. The control plane
redelivers a command whose delivery report it did not get (after a reconnect, for
instance); the inbox recognises the id and the dispatcher drops the duplicate, or sends
the stored result again when the command already finished. Finished ids are remembered
within a :class:`~fleetgate.agent.spool.retention.Retention` policy, oldest forgotten first; ids
in progress are never forgotten.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from uuid import UUID

from fleetgate.agent.spool.retention import Eviction, Retention


__all__ = ["CommandState", "Inbox"]


class CommandState(enum.Enum):
    """Where a command the agent accepted stands."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"


class Inbox:
    """The accepted command ids with their state; finished ones bounded by a retention."""

    def __init__(self, *, retention: Retention | None = None) -> None:
        self._active: dict[UUID, CommandState] = {}
        # command id -> (finished at, stored result bytes), oldest first
        self._finished: OrderedDict[UUID, tuple[float, int]] = OrderedDict()
        self._finished_bytes = 0
        self._retention = retention or Retention()

    def accept(self, command_id: UUID) -> bool:
        """Record a delivery; return False if this id was seen before (a duplicate)."""
        if command_id in self._active or command_id in self._finished:
            return False
        self._active[command_id] = CommandState.QUEUED
        return True

    def advance(self, command_id: UUID, to: CommandState) -> None:
        """Move a command from queued to running.

        Raises:
            ValueError: the id is unknown or the move is not queued→running (use
                :meth:`finish` to end a command).
        """
        current = self._active.get(command_id)
        if current is not CommandState.QUEUED or to is not CommandState.RUNNING:
            raise ValueError(f"illegal transition {current} -> {to} for {command_id}")
        self._active[command_id] = to

    def finish(self, command_id: UUID, *, at: float, size: int, now: float) -> Eviction:
        """Mark an accepted command finished; return what the retention made forgettable.

        ``at`` and ``now`` are wall-clock seconds; ``size`` is the stored result's size.

        Raises:
            ValueError: the id is not queued or running.
        """
        if self._active.pop(command_id, None) is None:
            raise ValueError(f"cannot finish {command_id}: not accepted or already finished")
        self._remember(command_id, at, size)
        return self.expire(now)

    def restore(
        self,
        active: list[tuple[UUID, CommandState]],
        finished: list[tuple[UUID, float, int]],
    ) -> None:
        """Load the state found in the store at start (oldest first)."""
        for command_id, state in active:
            self._active[command_id] = state
        for command_id, at, size in finished:
            self._remember(command_id, at, size)

    def expire(self, now: float) -> Eviction:
        """Forget the oldest finished commands until the retention policy holds."""
        eviction = Eviction()
        while self._finished:
            oldest, (at, size) = next(iter(self._finished.items()))
            reason = self._retention.reason_to_drop(
                entries=len(self._finished),
                total_bytes=self._finished_bytes,
                oldest_at=at,
                now=now,
            )
            if reason is None:
                break
            del self._finished[oldest]
            self._finished_bytes -= size
            eviction.add(oldest, reason)
        return eviction

    def state(self, command_id: UUID) -> CommandState | None:
        """The state of a command, or None if it was never seen (or long forgotten)."""
        if command_id in self._finished:
            return CommandState.FINISHED
        return self._active.get(command_id)

    def active(self) -> list[UUID]:
        """Ids accepted and not finished, in arrival order."""
        return list(self._active)

    def __len__(self) -> int:
        return len(self._active) + len(self._finished)

    def _remember(self, command_id: UUID, at: float, size: int) -> None:
        self._finished[command_id] = (at, size)
        self._finished_bytes += size
