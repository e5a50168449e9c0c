"""The loop shared by the hub's timers: act on what is due, sleep until the next due time.

A timer's ``step`` does what is due and returns the seconds until the next due moment
(``None``: nothing scheduled). The loop then sleeps that long, or until ``wake`` is set
because something new was scheduled: no polling with a fixed tick.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog


__all__ = ["RETRY_AFTER_ERROR", "run_timer"]

RETRY_AFTER_ERROR = 1.0
"""Seconds before a step that raised is tried again."""

log = structlog.get_logger("fleetgate.controlplane.hub")


async def run_timer(
    step: Callable[[], Awaitable[float | None]], wake: asyncio.Event, *, name: str
) -> None:
    """Run ``step`` forever (until cancelled), sleeping between runs as it asks."""
    while True:
        wake.clear()
        try:
            delay = await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error(f"{name}_failed", exc_info=exc)
            delay = RETRY_AFTER_ERROR
        if delay is None or delay > 0:
            try:
                async with asyncio.timeout(delay):
                    await wake.wait()
            except TimeoutError:
                pass
