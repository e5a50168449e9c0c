"""Helpers of the websh tests: an in-memory channel link and a reader of terminal output."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from fleetgate.agent.errors import ChannelClosed


__all__ = ["FakeLink", "PtyScreen", "TerminalReader", "shell_round", "ws_source"]

Source = Callable[[], Awaitable[bytes | str | None]]
"""The next frame of a terminal, or None once it is closed."""


def ws_source(ws: ClientConnection, closed: list[tuple[int, str]]) -> Source:
    """Frames of a client websocket; its close code and reason are appended to ``closed``."""

    async def next_frame() -> bytes | str | None:
        try:
            return await ws.recv()
        except ConnectionClosed as exc:
            frame = exc.rcvd
            closed.append((frame.code, frame.reason) if frame else (1006, ""))
            return None

    return next_frame


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


async def expect_output(
    output: bytearray,
    pattern: str,
    *,
    more: Callable[[], Awaitable[None]],
    ended: Callable[[], bool],
    timeout: float,
) -> re.Match[str]:
    """Wait until ``pattern`` matches ``output`` (decoded), reading ``more`` meanwhile;
    consume the output up to the match."""
    regex = re.compile(pattern)

    async def wait() -> re.Match[str]:
        while True:
            text = output.decode("utf-8", "replace")
            match = regex.search(text)
            if match:
                del output[: len(text[: match.end()].encode())]
                return match
            if ended():
                raise AssertionError(f"output ended before {pattern!r}; got {text!r}")
            await more()

    try:
        return await asyncio.wait_for(wait(), timeout)
    except TimeoutError:
        raise AssertionError(
            f"{pattern!r} not seen in {timeout} s; got {bytes(output)!r}"
        ) from None


class TerminalReader:
    """Accumulates a link's output and waits for patterns in it."""

    def __init__(self, link: FakeLink | Source) -> None:
        self._source: Source = link.from_agent.get if isinstance(link, FakeLink) else link
        self.output = bytearray()
        self.controls: list[dict[str, Any]] = []
        self.closed = False

    async def _next(self) -> None:
        item = await self._source()
        if item is None:
            self.closed = True
        elif isinstance(item, bytes):
            self.output += item
        else:
            self.controls.append(json.loads(item))

    async def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until ``pattern`` matches the output decoded so far; consume up to the match."""
        return await expect_output(
            self.output, pattern, more=self._next, ended=lambda: self.closed, timeout=timeout
        )

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


def run_on_pty(argv: list[str], timeout: float = 30.0) -> tuple[int, bytes]:
    """Run ``argv`` on a fresh pseudo-terminal (tools such as ``asciinema cat`` open
    /dev/tty) and return its exit status and everything it printed."""
    import time

    from ptyprocess import PtyProcess

    proc = PtyProcess.spawn(argv, dimensions=(24, 80))
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                output += proc.read(65536)
            except EOFError:
                break
        else:
            raise AssertionError(f"{argv} did not finish in {timeout} s")
        proc.wait()
    finally:
        if proc.isalive():
            proc.terminate(force=True)
    return int(proc.exitstatus or 0), bytes(output)


class PtyScreen:
    """What a program on a pseudo-terminal (ptyprocess) printed, read without blocking
    the event loop."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.output = bytearray()
        self.eof = False

    async def _more(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = self.proc.fd

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
        try:
            self.output += self.proc.read(65536)
        except EOFError:
            self.eof = True

    async def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Wait until ``pattern`` matches; consume the output up to the match."""
        return await expect_output(
            self.output, pattern, more=self._more, ended=lambda: self.eof, timeout=timeout
        )

    async def until_eof(self, timeout: float = 15.0) -> None:
        """Read until the program closed the terminal."""

        async def wait() -> None:
            while not self.eof:
                await self._more()

        await asyncio.wait_for(wait(), timeout)


async def shell_round(
    argv: list[str], env: dict[str, str], cwd: str, *, user: str, tag: str, exit_code: int
) -> None:
    """Open a terminal with ``argv`` (agentctl websh) on a pseudo-terminal, check the
    shell runs as ``user`` (the echo of ``tag`` is computed by the shell, not typed back),
    leave it with ``exit_code`` and check agentctl exits with that code."""
    from ptyprocess import PtyProcess  # only the terminal tests need it

    proc = PtyProcess.spawn(argv, env=env, cwd=cwd, dimensions=(24, 80))
    screen = PtyScreen(proc)
    split = f"{tag[0]}''{tag[1:]}"
    try:
        await screen.expect(r"\$ ")
        proc.write(f"echo {split}-$((6*7)) U''=$(id -un)\r".encode())
        assert (await screen.expect(rf"{re.escape(tag)}-42 U=(\w+)")).group(1) == user
        proc.write(f"exit {exit_code}\r".encode())
        await screen.until_eof()
    finally:
        if proc.isalive():
            proc.terminate(force=True)
    proc.wait()
    assert proc.exitstatus == exit_code
