"""`exec`'s one request through the standard library's `http.client`.

Importing httpx costs about 90 ms, more than a whole `exec` round trip; `http.client` about
25 ms. `Client.post_stream` uses this module for the streaming create of a command (one
POST, an NDJSON answer read line by line); every other request goes through httpx.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from fleetgate.agentctl.client import (
    CONNECT_TIMEOUT,
    STREAM_IDLE_TIMEOUT,
    StreamBroken,
    StreamIdle,
    error_from_answer,
)


if TYPE_CHECKING:
    from fleetgate.agentctl.client import Client


@contextmanager
def post_lines(
    client: Client, path: str, params: dict[str, Any], json_body: Any
) -> Iterator[Iterator[str]]:
    """POST `json_body` to `path` on `client`'s control plane; yield the answer's lines.

    Raises:
        CliError: no answer (`cannot reach URL: reason`), before anything is yielded.
        ControlPlaneError: an HTTP error answer, before anything is yielded.
        StreamIdle, StreamBroken: while reading (the caller resumes).
    """
    parts = urlsplit(client.url)
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=CONNECT_TIMEOUT, context=client.ssl_context()
        )
    else:
        connection = http.client.HTTPConnection(
            parts.hostname or "", parts.port, timeout=CONNECT_TIMEOUT
        )
    target = f"{parts.path}{path}?{urlencode(params)}"
    body = json.dumps(json_body).encode()
    headers = {
        **client.headers,
        "Accept": "application/x-ndjson",
        "Content-Type": "application/json",
    }
    try:
        try:
            # http.client turns Nagle off itself (TCP_NODELAY on connect).
            connection.request("POST", target, body=body, headers=headers)
            if connection.sock is not None:
                connection.sock.settimeout(STREAM_IDLE_TIMEOUT)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise client.unreachable(exc) from None
        if response.status >= 400:
            raise error_from_answer(response.status, _read_all(response), response.reason)
        yield _lines(response)
    finally:
        connection.close()


def _read_all(response: http.client.HTTPResponse) -> bytes:
    try:
        return response.read()
    except (OSError, http.client.HTTPException):
        return b""


def _lines(response: http.client.HTTPResponse) -> Iterator[str]:
    """The lines of the answer; read failures as StreamIdle/StreamBroken."""
    while True:
        try:
            line = response.readline()
        except TimeoutError:
            raise StreamIdle(f"the stream sent nothing for {STREAM_IDLE_TIMEOUT:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise StreamBroken(f"the stream broke: {exc or type(exc).__name__}") from None
        if not line:
            return
        yield line.decode("utf-8", "replace")
