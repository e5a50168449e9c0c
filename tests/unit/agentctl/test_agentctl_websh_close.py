"""How a closed terminal is reported: a 4403 close with a gate or token code exits 3 with
the reason (issue 15, item 9); other closes are not a gate matter."""

from __future__ import annotations

import json

from fleetgate.agentctl.commands.websh import _ended_by_gate
from fleetgate.agentctl.errors import (
    EXIT_GATE_DENIED,
    CliError,
    ControlPlaneError,
    ErrorContext,
    diagnose,
)


def reason(code: str, detail: str = "") -> str:
    return json.dumps({"code": code, "detail": detail})


def test_revoked_session_close_is_a_gate_diagnostic_with_exit_3() -> None:
    error = _ended_by_gate(4403, reason("work_session_revoked", "the session was revoked"))
    assert isinstance(error, ControlPlaneError)
    diagnostic = diagnose(error, ErrorContext(operation="websh", server="web-01"))
    assert diagnostic.exit_code == EXIT_GATE_DENIED
    assert diagnostic.payload["error_code"] == "work_session_revoked"
    assert diagnostic.payload["reason"] == "selected session was revoked"
    assert any("work_session_revoked" in line for line in diagnostic.lines)


def test_revoked_token_close_exits_3_and_says_so() -> None:
    error = _ended_by_gate(4403, reason("token_revoked", "the token was revoked"))
    assert isinstance(error, CliError)
    assert error.exit_code == EXIT_GATE_DENIED
    assert "token was revoked" in error.message


def test_other_closes_are_not_gate_endings() -> None:
    assert _ended_by_gate(1000, reason("work_session_revoked")) is None
    assert _ended_by_gate(4403, "not json") is None
    assert _ended_by_gate(4403, reason("TERMINAL_CLOSED")) is None
