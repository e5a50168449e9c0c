"""A thin synchronous httpx client for the control-plane API (`docs/api.md`).

It adds the base URL, the `Authorization: token="..."` header, the User-Agent and TLS settings,
and turns every failure into one of two exceptions: `ApiError` for an HTTP error answer and
`CliError` ("cannot reach <url>: ...") when no answer came at all.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import httpx

from fleetgate import __version__
from fleetgate.agentctl.errors import ApiError, CliError
from fleetgate.shared.jsontext import loads as json_loads


USER_AGENT = f"agentctl/{__version__}"
PAGE_SIZE_MAX = 100  # the server's cap on page_size

# Connect fast, but let a busy control plane take its time to answer.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# A stream may stay silent while the remote command is quiet; after this long without a byte
# the follower reconnects (cheap, resumable), which also detects half-dead TCP connections.
STREAM_IDLE_TIMEOUT = 60.0


def _error_from_response(response: httpx.Response) -> ApiError:
    """Build an ApiError from an error answer, whatever its body looks like."""
    return error_from_answer(response.status_code, response.content, response.reason_phrase)


def error_from_answer(status: int, content: bytes, reason: str = "") -> ApiError:
    """The ApiError of an HTTP error answer (also a refused websocket handshake)."""
    code, detail, source = f"HTTP_{status}", "", None
    try:
        body = json_loads(content) if content else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("code") or code)
        source = str(body["source"]) if body.get("source") else None
        if body.get("detail"):
            detail = str(body["detail"])
        else:
            # DRF-style `{field: [messages]}` bodies still say something useful.
            fields = {k: v for k, v in body.items() if k not in ("code", "source")}
            detail = "; ".join(f"{k}: {v}" for k, v in fields.items())
    elif content:
        detail = content.decode("utf-8", "replace").strip()[:200]
    return ApiError(status, code, detail or reason or "request failed", source)


NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
"""Socket options of every client connection: send small writes at once."""


class Client:
    """Client of one control plane, authenticated with one token (or none, for login)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        verify_tls: bool = True,
        ca_file: Path | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        work_session: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if token:
            headers["Authorization"] = f'token="{token}"'
        if work_session:
            # Gated reads (a command's output) name the session as gated creates do.
            headers["X-Work-Session"] = work_session
        verify: ssl.SSLContext | bool = verify_tls
        if verify_tls and ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise CliError(f"cannot load ca_file {ca_file}: {exc}") from None
        if transport is None:
            # httpx leaves Nagle on and writes headers and body separately: every request
            # would wait ~40 ms for the server's delayed ACK.
            transport = httpx.HTTPTransport(verify=verify, socket_options=NODELAY)
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def unreachable(self, exc: httpx.TransportError) -> CliError:
        """The error for a request that got no answer."""
        reason = str(exc) or type(exc).__name__
        return CliError(f"cannot reach {self.url}: {reason}", code="CONNECTION_FAILED")

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON body (None for an empty answer)."""
        try:
            response = self._http.request(method, path, json=json_body, params=params)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        if response.is_error:
            raise _error_from_response(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"unexpected answer from {self.url}{path}: not JSON "
                f"({response.headers.get('content-type', 'no content type')})"
            ) from None

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET `path` and return its JSON."""
        return self.request("GET", path, params=params)

    def download(self, path: str) -> bytes:
        """GET `path` and return the body as bytes (files such as recordings)."""
        try:
            response = self._http.request("GET", path)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        if response.is_error:
            raise _error_from_response(response)
        return response.content

    def post(self, path: str, body: Any) -> Any:
        """POST a JSON body to `path` and return the JSON answer."""
        return self.request("POST", path, json_body=body)

    def list_all(
        self, path: str, params: dict[str, Any] | None = None, *, limit: int | None = None
    ) -> list[Any]:
        """Walk a paginated list (`{count, next, previous, results}`), up to `limit` items."""
        query = dict(params or {})
        query.setdefault("page_size", PAGE_SIZE_MAX if limit is None else min(limit, 100))
        page = 1
        items: list[Any] = []
        while True:
            body = self.get(path, {**query, "page": page})
            if isinstance(body, list):  # an unpaginated list is the whole answer
                items.extend(body)
                break
            results = body.get("results") or [] if isinstance(body, dict) else []
            items.extend(results)
            if not results or not body.get("next") or (limit is not None and len(items) >= limit):
                break
            page += 1
        return items if limit is None else items[:limit]

    @contextmanager
    def stream_ndjson(
        self,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        method: str = "GET",
        json_body: Any = None,
    ) -> Iterator[Iterator[dict[str, Any]]]:
        """Open an NDJSON stream; yield an iterator of its decoded lines.

        HTTP errors raise `ApiError` before anything is yielded. Transport errors while
        reading propagate as `httpx.TransportError` so that the caller can resume.
        """
        timeout = httpx.Timeout(DEFAULT_TIMEOUT.connect, read=STREAM_IDLE_TIMEOUT)
        request = self._http.build_request(
            method, path, params=params, json=json_body, timeout=timeout
        )
        request.headers["Accept"] = "application/x-ndjson"
        response = self._http.send(request, stream=True)
        try:
            if response.is_error:
                response.read()
                raise _error_from_response(response)
            yield _decode_lines(response.iter_lines())
        finally:
            response.close()


class StreamProtocolError(Exception):
    """A stream line that is not a JSON object (treated like a broken stream)."""


def _decode_lines(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.strip():
            continue
        try:
            value = json_loads(line)
        except ValueError:
            raise StreamProtocolError(f"bad stream line: {line[:80]!r}") from None
        if not isinstance(value, dict):
            raise StreamProtocolError(f"bad stream line: {line[:80]!r}")
        yield value
