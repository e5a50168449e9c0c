"""A thin synchronous client for the control-plane API (`docs/api.md`).

It adds the base URL, the `Authorization: token="..."` header, the User-Agent and TLS settings,
and turns every failure into one of two exceptions: `ControlPlaneError` for an HTTP error answer and
`CliError` ("cannot reach <url>: ...") when no answer came at all.

Speed: importing httpx costs about 90 ms, more than a whole `exec` round trip, so this module
imports it only when the first httpx request is made, and the streaming create of `exec`
(`post_stream`, module `stdhttp`) goes through the standard library's `http.client`.
A test that injects an httpx transport takes the httpx path for every request.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from fleetgate import __version__
from fleetgate.agentctl.errors import AgentctlError, CliError, ControlPlaneError
from fleetgate.shared.tlserrors import describe_tls_error


if TYPE_CHECKING:
    import httpx


USER_AGENT = f"agentctl/{__version__}"
PAGE_SIZE_MAX = 100  # the server's cap on page_size

# Connect fast, but let a busy control plane take its time to answer.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
# A stream may stay silent while the remote command is quiet; after this long without a byte
# the follower reconnects (cheap, resumable), which also detects half-dead TCP connections.
STREAM_IDLE_TIMEOUT = 60.0


class StreamIdle(AgentctlError):
    """An open stream sent nothing for STREAM_IDLE_TIMEOUT seconds (resume at once).

    Like StreamBroken, an AgentctlError: a caller that does not resume still ends with a
    one-line message and exit 1, not a traceback."""


class StreamBroken(AgentctlError):
    """An open stream broke (the connection dropped or the answer was cut)."""


def _error_from_response(response: httpx.Response) -> ControlPlaneError:
    """Build an ControlPlaneError from an error answer, whatever its body looks like."""
    return error_from_answer(response.status_code, response.content, response.reason_phrase)


def error_from_answer(status: int, content: bytes, reason: str = "") -> ControlPlaneError:
    """The ControlPlaneError of an HTTP error answer (also a refused websocket handshake)."""
    code, detail, source = f"HTTP_{status}", "", None
    try:
        body = json.loads(content) if content else None
    except (ValueError, RecursionError):  # the standard parser: exec's path stays light
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
    return ControlPlaneError(status, code, detail or reason or "request failed", source)


@functools.lru_cache(maxsize=4)
def tls_context(ca_file: Path | None, verify: bool) -> ssl.SSLContext:
    """The TLS context of an https control plane: ``ca_file`` (else the system trust
    store), or no checks at all (``verify_tls = false``).

    Every client of agentctl (httpx, ``http.client``, the channel websockets) takes this
    one context, built once: a tunnel opens a websocket per connection.

    Raises:
        CliError: ``ca_file`` cannot be read or holds no certificate.
    """
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except OSError as exc:  # ssl.SSLError is an OSError too
        reason = exc.strerror or str(exc)
        raise CliError(f"cannot load ca_file {ca_file}: {reason}") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def unreachable(url: str, exc: BaseException, ca_file: Path | None) -> CliError:
    """``cannot reach URL: reason`` for a request that got no answer; a refused
    certificate reads ``certificate verify failed: why (checked against ...)``."""
    reason = describe_tls_error(exc, ca_file) or str(exc) or type(exc).__name__
    return CliError(f"cannot reach {url}: {reason}", code="CONNECTION_FAILED")


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
        self._headers = headers
        self._verify_tls = verify_tls
        self._ca_file = ca_file
        self._transport = transport
        self._client: httpx.Client | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The headers of every request (User-Agent, Accept, Authorization, ...)."""
        return dict(self._headers)

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context of an https control plane: its CA file, or no checks (--insecure)."""
        return tls_context(self._ca_file, self._verify_tls)

    @property
    def _http(self) -> httpx.Client:
        """The httpx client, made (and httpx imported) on first use."""
        if self._client is None:
            import httpx  # ~90 ms: only when a request needs it

            transport = self._transport
            if transport is None:
                # TLS settings only for https (building a context loads the CA bundle);
                # httpx leaves Nagle on and writes headers and body separately: every
                # request would wait ~40 ms for the server's delayed ACK.
                https = self.url.startswith("https://")
                verify: ssl.SSLContext | bool = self.ssl_context() if https else False
                transport = httpx.HTTPTransport(verify=verify, socket_options=NODELAY)
            self._client = httpx.Client(
                base_url=self.url,
                headers=self._headers,
                timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
                transport=transport,
            )
        return self._client

    def async_http(self, read_timeout: float = READ_TIMEOUT) -> httpx.AsyncClient:
        """An httpx AsyncClient with this client's URL, headers and TLS settings (for the
        long-polls an asyncio command runs beside its streams); the caller closes it."""
        import httpx  # see the module docstring

        https = self.url.startswith("https://")
        verify: ssl.SSLContext | bool = self.ssl_context() if https else False
        return httpx.AsyncClient(
            base_url=self.url,
            headers=self._headers,
            timeout=httpx.Timeout(read_timeout, connect=CONNECT_TIMEOUT),
            transport=httpx.AsyncHTTPTransport(verify=verify, socket_options=NODELAY),
        )

    def close(self) -> None:
        """Close the connection pool (if a request opened one)."""
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def unreachable(self, exc: BaseException) -> CliError:
        """The error for a request that got no answer."""
        return unreachable(self.url, exc, self._ca_file)

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON body (None for an empty answer)."""
        import httpx  # see the module docstring

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
        import httpx  # see the module docstring

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

        HTTP errors raise `ControlPlaneError` and a failed connection `CliError` before anything is
        yielded. While reading, a silent stream raises `StreamIdle` and a broken one
        `StreamBroken`, so that the caller can resume.
        """
        import httpx  # see the module docstring

        timeout = httpx.Timeout(CONNECT_TIMEOUT, read=STREAM_IDLE_TIMEOUT)
        request = self._http.build_request(
            method, path, params=params, json=json_body, timeout=timeout
        )
        request.headers["Accept"] = "application/x-ndjson"
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        try:
            if response.is_error:
                response.read()
                raise _error_from_response(response)
            yield _decode_lines(_httpx_lines(response))
        finally:
            response.close()

    @contextmanager
    def post_stream(
        self, path: str, params: dict[str, Any], json_body: Any
    ) -> Iterator[Iterator[dict[str, Any]]]:
        """POST `json_body` and read the NDJSON answer, like `stream_ndjson`.

        This is `exec`'s one request, so it uses `http.client` (see the module docstring);
        with an injected httpx transport (tests), or a proxy configured in the environment
        (which httpx honours and `http.client` does not), it is `stream_ndjson`.
        """
        if self._transport is not None or _proxied():
            with self.stream_ndjson(path, params, method="POST", json_body=json_body) as lines:
                yield lines
            return
        from fleetgate.agentctl import stdhttp  # http.client: the fast path's only HTTP

        with stdhttp.post_lines(self, path, params, json_body) as lines:
            yield _decode_lines(lines)


_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


def _proxied() -> bool:
    """True when the environment names an HTTP proxy (any case), as httpx would use."""
    return any(os.environ.get(name) or os.environ.get(name.upper()) for name in _PROXY_VARIABLES)


class StreamProtocolError(Exception):
    """A stream line that is not a JSON object (treated like a broken stream)."""


def _httpx_lines(response: httpx.Response) -> Iterator[str]:
    """The lines of an httpx answer; read failures as StreamIdle/StreamBroken."""
    import httpx  # already imported by the caller

    try:
        yield from response.iter_lines()
    except httpx.ReadTimeout:
        raise StreamIdle(f"the stream sent nothing for {STREAM_IDLE_TIMEOUT:g} s") from None
    except httpx.TransportError as exc:
        raise StreamBroken(f"the stream broke: {exc or type(exc).__name__}") from None


def _decode_lines(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):  # the standard parser: exec's path stays light
            raise StreamProtocolError(f"bad stream line: {line[:80]!r}") from None
        if not isinstance(value, dict):
            raise StreamProtocolError(f"bad stream line: {line[:80]!r}")
        yield value
