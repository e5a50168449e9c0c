"""Bounded HTTP request bodies, checked before any route parses them.

An ASGI middleware in front of the whole application: a request body larger than
``max_bytes`` is answered ``413 REQUEST_TOO_LARGE`` without being buffered, and a JSON
body that nests deeper than :data:`~fleetgate.shared.jsontext.MAX_JSON_DEPTH` is answered
``400`` (``INVALID_COMMAND`` on the command create route, ``INVALID_REQUEST`` elsewhere)
naming the limit. FastAPI's own parser recurses per level and turns a deep body into an
unexplained error; checking here covers every route, including routes added later.
Bodies that pass are handed to the application unchanged.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetgate.controlplane.errors import COMMAND_CREATE_PATH
from fleetgate.shared.jsontext import JSONDepthError, loads as json_loads


__all__ = ["BoundedBodies"]


class BoundedBodies:
    """ASGI middleware: refuse oversized and too deeply nested request bodies."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check an HTTP request's body, then pass the request on (or answer it)."""
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _answer(send, 413, "REQUEST_TOO_LARGE", self._too_large(declared), close=True)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _answer(send, 413, "REQUEST_TOO_LARGE", self._too_large(size), close=True)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body"))
        body = b"".join(chunks)
        if body and _is_json(scope):
            try:
                json_loads(body)
            except JSONDepthError as exc:
                code = (
                    "INVALID_COMMAND" if scope["path"] == COMMAND_CREATE_PATH else "INVALID_REQUEST"
                )
                await _answer(send, 400, code, f"body: {exc}")
                return
            except ValueError:
                pass  # not JSON: the route's own parser explains that
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self, size: int) -> str:
        return f"the request body of {size} bytes exceeds the limit of {self.max_bytes} bytes"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _is_json(scope: Scope) -> bool:
    # FastAPI parses a body as JSON when the type is JSON, and also when there is none.
    for name, value in scope["headers"]:
        if name == b"content-type":
            media: bytes = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return True


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # the disconnect, when the client goes

    return replay


async def _answer(send: Send, status: int, code: str, detail: str, *, close: bool = False) -> None:
    payload = json.dumps({"code": code, "detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if close:  # the rest of the body was not read: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
