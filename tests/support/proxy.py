"""A loopback TCP proxy the test controls, to cut the network between two processes.

It listens on a fixed loopback port and forwards every connection to ``127.0.0.1:target``.
Three modes, switched at any time from the test's thread:

* ``pass``: bytes flow both ways;
* ``drop``: every open connection is reset now, new ones are closed at once (a link that
  fails loudly: the peers notice immediately);
* ``blackhole``: connections stay open and new ones are accepted, but nothing moves in
  either direction (a link that fails silently: only a keepalive notices). Bytes already
  read are held, not lost; back in ``pass`` they flow again, as after a real partition.
  Connections accepted during the blackhole never reached the target and are closed.

The proxy runs its own event loop in a daemon thread, so it works with synchronous tests
and subprocesses alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal


__all__ = ["Mode", "TcpProxy", "running_proxy"]

Mode = Literal["pass", "drop", "blackhole"]

_CHUNK = 64 * 1024


class _Link:
    """One accepted client connection and, unless blackholed at birth, its upstream."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """See the module docstring. Use :func:`running_proxy`, or :meth:`start` / :meth:`close`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.mode: Mode = "pass"
        self.connections_accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        """Start listening on a free loopback port (then in :attr:`port`)."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def set_mode(self, mode: Mode) -> None:
        """Switch modes; returns once the switch took effect."""
        asyncio.run_coroutine_threadsafe(self._set_mode(mode), self._loop).result(10)

    def close(self) -> None:
        """Close everything and stop the thread."""
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_mode(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "pass":
            for link in [link for link in self._links if link.upstream is None]:
                self._forget(link)  # accepted in the blackhole: never reached the target
            self._flowing.set()
            return
        self._flowing.clear()
        if mode == "drop":
            for link in list(self._links):
                self._forget(link)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            self._forget(link)

    def _forget(self, link: _Link) -> None:
        link.abort()
        self._links.discard(link)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        link = _Link(writer)
        if self.mode == "drop":
            writer.transport.abort()
            return
        self._links.add(link)
        if self.mode == "blackhole":
            return  # held open, going nowhere, until the mode changes
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            self._forget(link)
            return
        link.upstream = up_writer
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, link)),
            asyncio.create_task(self._pump(up_reader, writer, link)),
        ]

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await source.read(_CHUNK)
                if not data:
                    break
                # Read during a blackhole: hold it until the link flows again.
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except OSError:
            pass  # a reset by either peer ends the link, as the finally says
        finally:
            with contextlib.suppress(OSError):
                self._forget(link)


@contextmanager
def running_proxy(target_port: int) -> Iterator[TcpProxy]:
    """A started proxy to ``127.0.0.1:target_port``, closed at the end."""
    proxy = TcpProxy(target_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
