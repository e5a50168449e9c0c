"""A terminal's attached channel: the agent's end of it (:class:`Link`), one attachment,
and serving it with a sender and a receiver until the first of them ends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol


__all__ = ["Attachment", "Link", "first_of"]


class Link(Protocol):
    """The agent's end of a channel (``fleetgate.agent.backhaul.channel.ChannelLink``)."""

    async def recv(self) -> bytes | str: ...
    async def send(self, data: bytes | str) -> None: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class Attachment:
    """One attached channel; ``ended`` is set when the terminal said its last word on it."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.ended = asyncio.Event()


async def first_of(*coros: Awaitable[None]) -> None:
    """Run the coroutines until the first one returns or raises; cancel and await the rest."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
