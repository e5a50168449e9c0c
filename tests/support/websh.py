"""Helpers of the websh tests: an in-memory channel link and a reader of terminal output."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from agent.errors import ChannelClosed


__all__ = ["FakeLink", "TerminalReader"]


class FakeLink:
    """The agent's end of a channel, in memory: the test plays the client.

    ``send_limit`` bounds what the agent may send before the test reads (a slow client).
    """

    def __init__(self, send_limit: int = 0) -> None:
        self.to_agent: asyncio.Queue[bytes | str | ChannelClosed] = asyncio.Queue()
        self.from_agent: asyncio.Queue[bytes | str | None] = asyncio.Queue(send_limit)
        self.closed: tuple[int, str] | None = None

    async def recv(self) -> bytes | str:
        item = await self.to_agent.get()
        if isinstance(item, ChannelClosed):
            self.closed = (item.code, item.reason)
            raise item
        return item

    async def send(self, data: bytes | str) -> None:
        if self.closed is not None:
            raise ChannelClosed(*self.closed)
        await self.from_agent.put(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed is None:
            self.closed = (code, reason)
            self.from_agent.put_nowait(None)

    def drop(self) -> None:
        """The websocket was lost (as seen by the agent)."""
        self.to_agent.put_nowait(ChannelClosed(1006, "lost"))


class TerminalReader:
    """Accumulates a link's output and waits for patterns in it."""

    def __init__(self, link: FakeLink) -> None:
        self.link = link
        self.output = bytearray()
        self.controls: list[dict[str, Any]] = []
        self.closed = False

    async def _next(self) -> None:
        item = await self.link.from_agent.get()
        if item is None:
            self.closed = True
        elif isinstance(item, bytes):
            self.output += item
        else:
            self.controls.append(json.loads(item))

    async def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until ``pattern`` matches the output decoded so far; consume up to the match."""
        regex = re.compile(pattern)

        async def wait() -> re.Match[str]:
            while True:
                text = self.output.decode("utf-8", "replace")
                match = regex.search(text)
                if match:
                    del self.output[: len(text[: match.end()].encode())]
                    return match
                if self.closed:
                    raise AssertionError(f"link closed before {pattern!r}; got {text!r}")
                await self._next()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{pattern!r} not seen in {timeout} s; got {bytes(self.output)!r}"
            ) from None

    async def control(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for the next control frame of type ``kind``."""

        async def wait() -> dict[str, Any]:
            while True:
                for frame in self.controls:
                    if frame["type"] == kind:
                        self.controls.remove(frame)
                        return frame
                if self.closed:
                    raise AssertionError(f"link closed before a {kind} frame")
                await self._next()

        return await asyncio.wait_for(wait(), timeout)

    async def until_closed(self, timeout: float = 10.0) -> None:
        """Read everything until the agent closes the link."""

        async def wait() -> None:
            while not self.closed:
                await self._next()

        await asyncio.wait_for(wait(), timeout)
