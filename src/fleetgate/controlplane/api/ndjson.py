"""The HTTP answer of an NDJSON stream (a command's output, a streaming create).

Starlette's ``StreamingResponse`` does the same job at a higher price on the command
path, where every ``agentctl exec`` is one such answer:

- its last line and the end of the body go out as two writes (two TCP segments on
  loopback, two wake-ups of the client); here a :class:`Last` line carries the end;
- under uvicorn's HTTP protocol (ASGI spec 2.3) it watches for the client leaving with an
  anyio task group and cancel scopes; here one task in an ``asyncio.TaskGroup`` does it.

What the client receives is the same: ``application/x-ndjson``, chunked, one line per
event, sent as soon as it is produced.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


__all__ = ["Last", "NdjsonResponse"]

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""No caching, and no buffering by a proxy (nginx) in front: lines are live."""


class Last(str):
    """A line after which its stream ends: it is sent with the end of the body."""

    __slots__ = ()


class _ClientLeft(Exception):
    """The client closed the connection: the stream stops."""


class NdjsonResponse(StreamingResponse):
    """Send ``lines`` as they come; stop at a :class:`Last` line, at their end, or when
    the client leaves. ``on_close`` runs once at the end, whatever ended it (it releases
    what the caller set up for the stream, e.g. a wake-up subscription)."""

    def __init__(
        self,
        lines: AsyncGenerator[str, None],
        status_code: int = 200,
        *,
        on_close: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(
            lines, status_code=status_code, media_type="application/x-ndjson", headers=HEADERS
        )
        self._lines = lines
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream the lines while one task waits for the client to disconnect."""
        try:
            async with asyncio.TaskGroup() as tg:
                watcher = tg.create_task(_until_disconnect(receive))
                await self._send_lines(send)
                watcher.cancel()  # the answer is complete
        except* _ClientLeft:
            pass  # nobody to answer any more
        finally:
            try:
                await self._lines.aclose()  # its own clean-up (a subscription it holds)
            finally:
                if self._on_close is not None:
                    self._on_close()

    async def _send_lines(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for line in self._lines:
            last = isinstance(line, Last)
            await send({"type": "http.response.body", "body": line.encode(), "more_body": not last})
            if last:
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _until_disconnect(receive: Receive) -> None:
    """Return never; raise :class:`_ClientLeft` when the client disconnects."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientLeft
