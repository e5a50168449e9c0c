"""Where the commands of a decision are: a pattern's resolved for a short while, a call's
at every call (blocking: ``stat``, like :mod:`fleetgate.agent.sudo.proc`).

Resolving a pattern's command searches sudo's ``secure_path`` (a ``stat`` per directory
until the file is found) and checks the real path it leads to; it depends only on the
pattern and on root's files, and the same few patterns come back at every call of a
session. So its answer is reused for at most :data:`TTL` seconds. The call's command,
the file sudo is about to execute, is resolved and checked at every call: a match needs
the call's real path, found trusted now, to equal the pattern's. A path someone other
than root could change therefore never matches, cached pattern or not; what the cache
can delay is only root's own change (a new file earlier in ``secure_path``, a root-owned
symlink pointed elsewhere), by at most :data:`TTL` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fleetgate.agent.sudo import proc
from fleetgate.shared.sudo_patterns import Resolver


__all__ = ["MAX_ENTRIES", "TTL", "CommandPaths"]

TTL = 2.0
"""Seconds a pattern's resolved command is reused at most (as the account caches)."""

MAX_ENTRIES = 256
"""Pattern commands remembered at most; the oldest is dropped first."""


class CommandPaths:
    """The decision server's resolver (a :class:`~fleetgate.shared.sudo_patterns.
    CommandResolver`): :meth:`resolve` for pattern commands (cached), :meth:`realpath`
    for the call's command (never cached). Not thread-safe: the event loop is its user."""

    def __init__(
        self,
        secure_path: str,
        *,
        ttl: float = TTL,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fresh = Resolver.from_path(secure_path, proc.is_executable, proc.trusted_realpath)
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[str | None, float]] = {}

    def resolve(self, word: str, cwd: str = "/") -> str | None:
        """The real path of a pattern's command ``word``, resolved at most ``ttl``
        seconds ago (a relative path, which patterns never have, is not cached)."""
        if "/" in word and not word.startswith("/"):
            return self._fresh.resolve(word, cwd)
        now = self._clock()
        entry = self._entries.get(word)
        if entry is not None and now < entry[1]:
            return entry[0]
        real = self._fresh.resolve(word)
        self._entries.pop(word, None)
        self._entries[word] = (real, now + self._ttl)
        if len(self._entries) > self._max:
            del self._entries[next(iter(self._entries))]
        return real

    def __len__(self) -> int:
        return len(self._entries)

    def realpath(self, path: str) -> str | None:
        """The real path of the call's command, checked now (see
        :func:`~fleetgate.agent.sudo.proc.trusted_realpath`)."""
        return proc.trusted_realpath(path)
