"""Which control-plane replica the agent talks to now, among the configured URLs.

The backhaul moves to the next URL after each failure (a refused dial, a lost link), so
an agent whose replica died reaches another one within its reconnect backoff. Channels
and recording uploads dial the replica the backhaul is on, which holds the agent's link
and usually the channel's other end too.

There is one ring per configuration in a process (like the TLS context), so the
backhaul and the channel dialers share it without being wired to each other.
"""

from __future__ import annotations

import functools

from fleetgate.agent.config.link import ControlPlaneConfig


__all__ = ["UrlRing", "ring_for"]


class UrlRing:
    """The configured base URLs and the one in use; pure, no I/O."""

    def __init__(self, urls: tuple[str, ...]) -> None:
        if not urls:
            raise ValueError("a ring needs at least one URL")
        self._urls = urls
        self._index = 0

    @property
    def current(self) -> str:
        """The base URL to dial now."""
        return self._urls[self._index]

    def __len__(self) -> int:
        return len(self._urls)

    def rotate(self) -> str:
        """Move to the next URL (after a failure) and return it; one URL stays put."""
        self._index = (self._index + 1) % len(self._urls)
        return self.current


@functools.lru_cache(maxsize=4)
def ring_for(cp: ControlPlaneConfig) -> UrlRing:
    """The process's ring for ``cp`` (the same object on every call)."""
    return UrlRing(cp.all_urls)
