"""Pure parts of the control plane's tunnels: close reasons and session-end codes."""

from __future__ import annotations

import json

from fleetgate.shared.protocol.channels import refusal_reason


def test_close_reason_fits_a_close_frame() -> None:
    short = refusal_reason("work_session_expired", "work session x has expired")
    assert json.loads(short) == {
        "code": "work_session_expired",
        "detail": "work session x has expired",
    }
    long = refusal_reason("work_session_expired", "y" * 500)
    assert len(long.encode()) <= 123
    assert json.loads(long)["code"] == "work_session_expired"
    assert json.loads(long)["detail"].endswith("...")
