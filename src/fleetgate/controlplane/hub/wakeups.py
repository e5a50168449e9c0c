"""Per-command wake-ups for output streams.

A stream reader takes the current event of its command *before* reading the database,
then waits on it; :meth:`CommandWakeups.notify` sets that event and installs a fresh one. No
data travels through here (readers always read the database), so nothing can queue up
per subscriber.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


__all__ = ["CommandWakeups", "Subscription"]


@dataclass
class _Entry:
    event: asyncio.Event = field(default_factory=asyncio.Event)
    subscribers: int = 0


class Subscription:
    """A reader's handle on one command's wake-ups."""

    def __init__(self, entry: _Entry) -> None:
        self._entry = entry
        self.taken = entry.event
        """The event current when the subscription was taken: set by the first
        :meth:`CommandWakeups.notify` that follows it, even if it came before any
        :meth:`current`."""

    def current(self) -> asyncio.Event:
        """The event the next :meth:`CommandWakeups.notify` of this command will set."""
        return self._entry.event


class CommandWakeups:
    """Registry of per-command events; only commands somebody watches have one."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self.closed = False

    def close(self) -> None:
        """Shutdown: wake every reader for good (they check :attr:`closed` and end)."""
        self.closed = True
        self.notify(list(self._entries))

    @contextmanager
    def subscribe(self, command_id: str) -> Iterator[Subscription]:
        """Watch ``command_id`` for the duration of the ``with`` block."""
        entry = self._entries.get(command_id)
        if entry is None:
            entry = self._entries[command_id] = _Entry()
        entry.subscribers += 1
        try:
            yield Subscription(entry)
        finally:
            entry.subscribers -= 1
            if entry.subscribers == 0:
                del self._entries[command_id]

    def notify(self, command_ids: Iterable[str]) -> None:
        """Wake every reader of these commands."""
        for command_id in command_ids:
            entry = self._entries.get(command_id)
            if entry is not None:
                entry.event.set()
                entry.event = asyncio.Event()

    def __len__(self) -> int:
        return len(self._entries)
