"""Error -> exit code mapping, the JSON diagnostic shape, and HTTP error translation."""

from __future__ import annotations

import io
import json

import httpx
import pytest

from fleetgate.agentctl.client import Client
from fleetgate.agentctl.errors import (
    GATE_REASONS,
    CliError,
    ControlPlaneError,
    ErrorContext,
    UsageError,
    diagnose,
)
from fleetgate.agentctl.output import Output


DIAG_KEYS = {"error_code", "reason", "context", "next_actions"}


def test_plain_api_error_exits_1_with_detail_and_code() -> None:
    err = ControlPlaneError(404, "SERVER_NOT_FOUND", "no server named web-9")
    diag = diagnose(err, ErrorContext(operation="command", server="web-9"))
    assert diag.exit_code == 1
    assert diag.lines == ["agentctl: no server named web-9 (SERVER_NOT_FOUND)"]
    assert set(diag.payload) >= DIAG_KEYS
    assert diag.payload["error_code"] == "SERVER_NOT_FOUND"
    assert diag.payload["reason"] == "no server named web-9"
    assert diag.payload["context"]["server"] == "web-9"
    assert diag.payload["next_actions"][0]["command"] == "agentctl server ls"


@pytest.mark.parametrize("code", ["IDENTITY_NOT_ALLOWED", "SERVER_USERNAME_NOT_SET"])
def test_identity_refusals_exit_3_with_the_way_forward(code: str) -> None:
    err = ControlPlaneError(403, code, "runs as your server account 'erin'", "username")
    diag = diagnose(err, ErrorContext(operation="command", server="web-1"))
    assert diag.exit_code == 3
    assert diag.payload["exit_code"] == 3
    assert diag.payload["error_code"] == code
    assert diag.payload["next_actions"]
    assert f"({code})" in diag.lines[0]
    assert "Next:" in diag.lines


def test_401_hints_at_login() -> None:
    err = ControlPlaneError(401, "AUTHENTICATION_FAILED", "unknown token")
    diag = diagnose(err, ErrorContext(url="http://127.0.0.1:8000"))
    assert diag.exit_code == 1
    assert diag.lines[0] == "agentctl: unknown token (AUTHENTICATION_FAILED)"
    assert "agentctl login http://127.0.0.1:8000 --token <TOKEN>" in diag.lines[1]
    assert diag.payload["next_actions"][0]["command"].startswith("agentctl login")


@pytest.mark.parametrize("code", sorted(GATE_REASONS))
def test_every_gate_code_exits_3_with_the_seed_diagnostic(code: str) -> None:
    err = ControlPlaneError(403, code, "WorkSession required", source="command")
    diag = diagnose(err, ErrorContext(operation="command", server="web-01"))
    assert diag.exit_code == 3
    payload = diag.payload
    assert set(payload) >= DIAG_KEYS
    assert payload["error_code"] == code
    assert payload["reason"] == GATE_REASONS[code]
    assert payload["exit_code"] == 3
    assert payload["context"]["required_scope"] == "command"
    assert payload["context"]["target_servers"] == ["web-01"]
    assert payload["next_actions"], "a gate denial always says what to do next"
    assert all(a["command"].startswith("agentctl ") for a in payload["next_actions"])
    assert any("--server web-01" in a["command"] for a in payload["next_actions"])
    assert diag.lines[0].startswith("agentctl: the command operation requires")
    assert "Next:" in diag.lines


def test_gate_next_actions_depend_on_the_code() -> None:
    def first(code: str) -> str:
        diag = diagnose(ControlPlaneError(403, code, ""), ErrorContext(operation="command"))
        return str(diag.payload["next_actions"][0]["command"])

    assert first("work_session_required") == "agentctl work-session ls --status active"
    assert first("work_session_not_active") == "agentctl work-session current"
    assert first("work_session_expired").startswith("agentctl work-session create")  # not extend
    assert first("work_session_scope_not_allowed").startswith("agentctl work-session create")
    # Without a server the placeholder stays literal.
    assert "--server <SERVER>" in first("work_session_server_not_allowed")


def test_gate_scope_follows_the_operation() -> None:
    err = ControlPlaneError(403, "work_session_scope_not_allowed", "", source="tunnel")
    assert diagnose(err, ErrorContext()).payload["context"]["required_scope"] == "tunnel"


def test_gate_code_match_is_case_insensitive_but_403_only() -> None:
    assert (
        diagnose(ControlPlaneError(403, "WORK_SESSION_REQUIRED", ""), ErrorContext()).exit_code == 3
    )
    assert (
        diagnose(ControlPlaneError(400, "work_session_required", ""), ErrorContext()).exit_code == 1
    )


@pytest.mark.parametrize("code", ["PERMISSION_DENIED", "API_TOKEN_ACL_NOT_ALLOWED"])
def test_other_403s_are_general_failures(code: str) -> None:
    assert diagnose(ControlPlaneError(403, code, "no"), ErrorContext()).exit_code == 1


def test_usage_and_cli_errors() -> None:
    usage = diagnose(UsageError("bad flag", "usage: agentctl\n"), ErrorContext())
    assert usage.exit_code == 2
    assert usage.lines == ["usage: agentctl", "agentctl: error: bad flag"]
    assert usage.payload["error_code"] == "usage"
    cli = diagnose(
        CliError("cannot reach http://x: refused", code="CONNECTION_FAILED"), ErrorContext()
    )
    assert cli.exit_code == 1
    assert cli.lines == ["agentctl: cannot reach http://x: refused"]
    assert cli.payload["error_code"] == "CONNECTION_FAILED"


def test_json_mode_prints_one_compact_line_on_stderr() -> None:
    out, err = io.StringIO(), io.StringIO()
    Output(mode="json", stdout=out, stderr=err).diagnostic(
        diagnose(ControlPlaneError(403, "work_session_required", ""), ErrorContext(server="web-01"))
    )
    assert out.getvalue() == ""
    assert err.getvalue().count("\n") == 1
    assert json.loads(err.getvalue())["exit_code"] == 3


def _client(response: httpx.Response | Exception) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(response, Exception):
            raise response
        return response

    return Client("http://cp.test", "tok", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("response", "status", "code", "detail", "source"),
    [
        (
            httpx.Response(503, json={"code": "SERVER_NOT_CONNECTED", "detail": "offline"}),
            503,
            "SERVER_NOT_CONNECTED",
            "offline",
            None,
        ),
        (
            httpx.Response(403, json={"code": "work_session_required", "source": "command"}),
            403,
            "work_session_required",
            "Forbidden",
            "command",
        ),
        (
            httpx.Response(400, json={"line": ["may not be blank"]}),
            400,
            "HTTP_400",
            "line: ['may not be blank']",
            None,
        ),
        (
            httpx.Response(502, text="<html>bad gateway</html>"),
            502,
            "HTTP_502",
            "<html>bad gateway</html>",
            None,
        ),
    ],
)
def test_http_errors_become_one_api_error(
    response: httpx.Response, status: int, code: str, detail: str, source: str | None
) -> None:
    with pytest.raises(ControlPlaneError) as info:
        _client(response).get("/api/x/")
    assert (info.value.status, info.value.code, info.value.detail, info.value.source) == (
        status,
        code,
        detail,
        source,
    )


def test_connection_failure_is_cannot_reach() -> None:
    client = _client(httpx.ConnectError("connection refused"))
    with pytest.raises(CliError, match=r"^cannot reach http://cp.test: connection refused$"):
        client.get("/api/x/")


def test_client_sends_token_header_and_user_agent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    client = Client("http://cp.test/", "fat_abc", transport=httpx.MockTransport(handler))
    assert client.get("/api/auth/whoami/") is None
    assert seen[0].headers["authorization"] == 'token="fat_abc"'
    assert seen[0].headers["user-agent"].startswith("agentctl/")
    assert str(seen[0].url) == "http://cp.test/api/auth/whoami/"


def test_list_all_follows_pages_up_to_the_limit() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        size = int(request.url.params["page_size"])
        results = [{"n": (page - 1) * size + i} for i in range(size)]
        return httpx.Response(200, json={"count": 1000, "next": "x", "results": results})

    client = Client("http://cp.test", "t", transport=httpx.MockTransport(handler))
    items = client.list_all("/api/events/commands/", limit=130)
    assert [i["n"] for i in items] == list(range(130))
