"""Command ids the agent has seen, so that a command delivered twice runs once.

Pure bookkeeping, no I/O. The control plane redelivers a command whose delivery report it
did not get (after a reconnect, for instance); the inbox recognises the id and the
dispatcher drops the duplicate. Finished ids are remembered up to a bound, oldest forgotten
first; running ids are never forgotten while they run.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from uuid import UUID


__all__ = ["CommandState", "Inbox"]


class CommandState(enum.Enum):
    """Where a command the agent accepted stands."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"


_NEXT: dict[CommandState, CommandState] = {
    CommandState.QUEUED: CommandState.RUNNING,
    CommandState.RUNNING: CommandState.FINISHED,
}


class Inbox:
    """The set of accepted command ids with their state, bounded in finished entries."""

    def __init__(self, *, max_finished: int = 100_000) -> None:
        if max_finished < 1:
            raise ValueError("max_finished must be positive")
        self._active: dict[UUID, CommandState] = {}
        self._finished: OrderedDict[UUID, None] = OrderedDict()
        self._max_finished = max_finished

    def accept(self, command_id: UUID) -> bool:
        """Record a delivery; return False if this id was seen before (a duplicate)."""
        if command_id in self._active or command_id in self._finished:
            return False
        self._active[command_id] = CommandState.QUEUED
        return True

    def advance(self, command_id: UUID, to: CommandState) -> None:
        """Move a command to its next state.

        Raises:
            ValueError: the id is unknown or the move is not queued→running→finished.
        """
        current = self._active.get(command_id)
        if current is None or _NEXT.get(current) is not to:
            raise ValueError(f"illegal transition {current} -> {to} for {command_id}")
        if to is CommandState.FINISHED:
            del self._active[command_id]
            self._finished[command_id] = None
            while len(self._finished) > self._max_finished:
                self._finished.popitem(last=False)
        else:
            self._active[command_id] = to

    def state(self, command_id: UUID) -> CommandState | None:
        """The state of a command, or None if it was never seen (or long forgotten)."""
        if command_id in self._finished:
            return CommandState.FINISHED
        return self._active.get(command_id)

    def active(self) -> list[UUID]:
        """Ids accepted and not finished, in arrival order."""
        return list(self._active)
