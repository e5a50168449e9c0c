"""The control plane's background loops (scheduler, work-session clock), owned by one task.

The lifespan must not yield inside a TaskGroup: the group's host task would be the
server's lifespan task, and a failing loop would cancel it at whatever it was doing.
Here the loops run in a task of their own that owns the TaskGroup; the lifespan only
starts it and, at shutdown, cancels it and waits for it. A loop that fails is logged with
its traceback and ``on_failure`` is called: by default the process asks itself to stop
(SIGTERM, the graceful path), since a control plane without its scheduler is broken and
its supervisor should restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any

import structlog


__all__ = ["Loop", "OnFailure", "run_in_background", "stop_process"]

log = structlog.get_logger(__name__)

Loop = Callable[[], Coroutine[Any, Any, None]]
OnFailure = Callable[[BaseExceptionGroup[Exception]], None]


def stop_process(_: BaseExceptionGroup[Exception]) -> None:
    """Ask this process to shut down gracefully (the server handles SIGTERM)."""
    os.kill(os.getpid(), signal.SIGTERM)


@contextlib.asynccontextmanager
async def run_in_background(
    loops: Mapping[str, Loop], on_failure: OnFailure = stop_process
) -> AsyncIterator[None]:
    """Run ``loops`` (name -> coroutine function) until the block exits."""
    runner = asyncio.create_task(_run(loops, on_failure), name="background")
    try:
        yield
    finally:
        runner.cancel()
        # Wait for the loops' own cleanup. asyncio.wait does not raise the runner's
        # (expected) cancellation, while a cancellation of this task still propagates.
        await asyncio.wait([runner])


async def _run(loops: Mapping[str, Loop], on_failure: OnFailure) -> None:
    try:
        async with asyncio.TaskGroup() as tg:
            for name, loop in loops.items():
                tg.create_task(loop(), name=name)
    except* Exception as group:
        for exc in group.exceptions:
            log.error("background.loop_failed", error=repr(exc), exc_info=exc)
        on_failure(group)
