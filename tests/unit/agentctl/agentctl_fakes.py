"""An in-memory stand-in for the control-plane API, served through `httpx.MockTransport`.

It implements just enough of docs/api.md for agentctl's unit tests: no sockets, no threads.
Streams are scripted per call so that tests can break them on purpose.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from fleetgate.agentctl.main import main


TOKEN = "fat_unit-test-token"
URL = "http://cp.test"
SERVER_ID = "7e3984de-49ab-4cc6-bcdf-21fbd35858b8"


def make_command(
    command_id: str = "c-1",
    *,
    exit_code: int | None = 0,
    text: str = "Success",
    message: str = "Finished at 2024-01-15 10:30:45",
    error_phase: str | None = None,
    line: str = "id -un",
    result: str = "",
) -> dict[str, Any]:
    """A command object shaped like docs/api.md."""
    return {
        "id": command_id,
        "shell": "system",
        "line": line,
        "success": None if exit_code is None else exit_code == 0,
        "exit_code": exit_code,
        "result": result,
        "truncated": False,
        "status": {"text": text, "color": "success", "cancellable": False, "message": message},
        "response_delay": 0.125,
        "elapsed_time": 0.023,
        "added_at": "2024-01-15T10:30:44Z",
        "scheduled_at": "2024-01-15T10:30:44Z",
        "delivered_at": "2024-01-15T10:30:44.100Z",
        "acked_at": "2024-01-15T10:30:44.125Z",
        "handled_at": "2024-01-15T10:30:44.148Z",
        "server": SERVER_ID,
        "server_name": "web-01",
        "username": "root",
        "groupname": "",
        "requested_by": {"id": 1, "username": "admin", "email": ""},
        "error_phase": error_phase,
        "timeout": None,
    }


def ndjson(*events: dict[str, Any]) -> bytes:
    """Encode events as NDJSON."""
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


class BrokenStream(httpx.SyncByteStream):
    """A response body that sends `data` and then fails like a dropped connection."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self._data
        raise httpx.RemoteProtocolError("peer closed connection")


class PrefixedStream(httpx.SyncByteStream):
    """`prefix`, then the bytes of another stream (which may fail like a dropped link)."""

    def __init__(self, prefix: bytes, rest: httpx.SyncByteStream | httpx.AsyncByteStream) -> None:
        assert isinstance(rest, httpx.SyncByteStream)
        self._prefix = prefix
        self._rest = rest

    def __iter__(self) -> Iterator[bytes]:
        yield self._prefix
        yield from self._rest


StreamScript = Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeApi:
    """Routes requests to canned answers and records them."""

    commands: dict[str, dict[str, Any]] = field(default_factory=dict)
    chunks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    streams: list[StreamScript] = field(default_factory=list)
    errors: dict[tuple[str, str], httpx.Response] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    next_id: str = "c-1"
    me: dict[str, Any] = field(
        default_factory=lambda: {
            "id": 1,
            "username": "admin",
            "email": "admin@example.com",
            "is_superuser": True,
            "auth_method": "token",
            "work_session_required": False,
        }
    )

    def transport(self) -> httpx.MockTransport:
        """The transport to hand to agentctl."""
        return httpx.MockTransport(self.handle)

    def posted(self, path: str) -> list[dict[str, Any]]:
        """JSON bodies POSTed to `path`."""
        return [
            json.loads(r.content)
            for r in self.requests
            if r.method == "POST" and r.url.path == path
        ]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        if (method, path) in self.errors:
            return self.errors[(method, path)]
        if (
            request.headers.get("authorization") != f'token="{TOKEN}"'
            and path != "/api/auth/login/"
        ):
            return httpx.Response(
                401, json={"code": "AUTHENTICATION_FAILED", "detail": "bad token"}
            )
        if path == "/api/auth/whoami/":
            return httpx.Response(200, json=self.me)
        if path == "/api/auth/login/":
            return httpx.Response(200, json={"token": TOKEN, "expires_at": None})
        if path == "/api/servers/servers/":
            server = {
                "id": SERVER_ID,
                "name": "web-01",
                "agent_version": "0.1.0",
                "is_connected": True,
                "last_seen_at": None,
            }
            return httpx.Response(
                200, json={"count": 1, "next": None, "previous": None, "results": [server]}
            )
        if path.startswith("/api/servers/servers/"):
            name = path.split("/")[-2]
            if name in ("web-01", SERVER_ID):
                return httpx.Response(200, json={"id": SERVER_ID, "name": "web-01"})
            return httpx.Response(404, json={"code": "SERVER_NOT_FOUND", "detail": "no server"})
        if path == "/api/events/commands/" and method == "POST":
            body = json.loads(request.content)
            if body["server"] not in ("web-01", SERVER_ID):
                return httpx.Response(
                    404, json={"code": "SERVER_NOT_FOUND", "detail": f"no server {body['server']}"}
                )
            created = make_command(self.next_id, exit_code=None, text="Queued")
            if request.url.params.get("stream") != "true":
                return httpx.Response(201, json=created)
            # A streaming create: the `created` line, then the next scripted stream's body.
            scripted = self.streams.pop(0)(request)
            if scripted.status_code != 200:
                return scripted
            prefix = ndjson({"event": "created", "command": created})
            return httpx.Response(201, stream=PrefixedStream(prefix, scripted.stream))
        if path == "/api/events/commands/":
            results = list(self.commands.values())
            return httpx.Response(
                200,
                json={"count": len(results), "next": None, "previous": None, "results": results},
            )
        parts = path.strip("/").split("/")  # api events commands <id> [chunks|stream]
        command_id = parts[3]
        if len(parts) == 4:
            if command_id not in self.commands:
                return httpx.Response(404, json={"code": "COMMAND_NOT_FOUND", "detail": "nope"})
            return httpx.Response(200, json=self.commands[command_id])
        if parts[4] == "chunks":
            gte = int(request.url.params.get("seq__gte", "0"))
            results = [c for c in self.chunks.get(command_id, []) if c["seq"] >= gte]
            return httpx.Response(
                200,
                json={"count": len(results), "next": None, "previous": None, "results": results},
            )
        return self.streams.pop(0)(request)


def run(
    api: FakeApi, *argv: str, stdin: str = "", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run agentctl against `api`; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    environment = {"AGENTCTL_URL": URL, "AGENTCTL_TOKEN": TOKEN, "AGENTCTL_CONFIG": "/nonexistent"}
    code = main(
        list(argv),
        env={**environment, **(env or {})},
        stdin=io.StringIO(stdin),
        stdout=out,
        stderr=err,
        transport=api.transport(),
    )
    return code, out.getvalue(), err.getvalue()
