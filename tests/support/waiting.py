"""Waiting for a state another task or process changes, when there is no event to await.

One idea, two forms: :func:`eventually` in async tests (the condition may itself be a
coroutine function, e.g. an HTTP query), :func:`eventually_blocking` in synchronous ones.
Both poll at a short interval until the condition holds, and fail with ``what`` after
``timeout`` seconds. Prefer awaiting a real event where one exists.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


__all__ = ["eventually", "eventually_blocking"]

INTERVAL = 0.02


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10.0,
    what: str = "condition",
) -> None:
    """Return once ``condition()`` holds; :class:`AssertionError` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        assert time.monotonic() < deadline, f"{what} not met within {timeout:g} s"
        await asyncio.sleep(INTERVAL)


def eventually_blocking(
    condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """:func:`eventually` for synchronous tests (blocks the calling thread)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout:g} s"
        time.sleep(INTERVAL)
