"""Retry delays, pure: capped exponential backoff with full jitter, for every part that retries.

A delay is drawn uniformly between 0 and the capped exponential bound, so a fleet that
lost its control plane at the same instant does not dial back in lockstep, and many
clients retrying one control plane spread out. The agent's backhaul, its recording
shipper and agentctl's reconnects all take their delays from here.
"""

from __future__ import annotations

import random
from collections.abc import Iterator


__all__ = ["Backoff", "backoff_delays"]


def backoff_delays(
    min_delay: float, max_delay: float, *, rng: random.Random | None = None
) -> Iterator[float]:
    """Yield reconnect delays: uniform in [0, min(max_delay, min_delay * 2**n)].

    The very first delay is drawn from [0, min_delay] so a restart of the whole fleet does
    not produce one synchronized burst either.
    """
    if min_delay <= 0 or max_delay < min_delay:
        raise ValueError("need 0 < min_delay <= max_delay")
    draw = (rng or random.Random()).uniform  # noqa: S311 - jitter, not cryptography
    bound = min_delay
    while True:
        yield draw(0.0, bound)
        bound = min(max_delay, bound * 2)


class Backoff:
    """The reconnect schedule of one backhaul: next delay, and reset after a stable link.

    ``stable_after`` seconds of uptime count as a stable connection: the next failure
    starts again from ``min_delay``. A link that drops sooner keeps climbing, so a control
    plane that accepts and at once drops connections is not hammered.
    """

    def __init__(
        self,
        min_delay: float,
        max_delay: float,
        stable_after: float,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._bounds = (min_delay, max_delay)
        self._stable_after = stable_after
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._delays = backoff_delays(min_delay, max_delay, rng=self._rng)

    def next_delay(self, uptime: float) -> float:
        """The delay before the next dial, after a connection that was up ``uptime`` s
        (0 when it never came up); resets the schedule first if that was stable."""
        if uptime >= self._stable_after and uptime > 0:
            self._delays = backoff_delays(*self._bounds, rng=self._rng)
        return next(self._delays)
