"""Pure parts of the control plane's tunnels: close reasons and session-end codes."""

from __future__ import annotations

import json

from controlplane.hub.tunnels import close_reason


def test_close_reason_fits_a_close_frame() -> None:
    short = close_reason("work_session_expired", "work session x has expired")
    assert json.loads(short) == {
        "code": "work_session_expired",
        "detail": "work session x has expired",
    }
    long = close_reason("work_session_expired", "y" * 500)
    assert len(long.encode()) <= 123
    assert json.loads(long)["code"] == "work_session_expired"
    assert json.loads(long)["detail"].endswith("...")
