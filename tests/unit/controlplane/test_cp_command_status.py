"""The status object and response_delay, for every state of the table in docs/api.md."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from fleetgate.controlplane.command_status import command_status, response_delay


S = 1_000_000
NOW = 1_705_314_645 * S  # 2024-01-15 10:30:45 UTC


@dataclass(frozen=True)
class Cmd:
    scheduled_at: int = NOW - 10 * S
    sent_at: int | None = None
    delivered_at: int | None = None
    acked_at: int | None = None
    handled_at: int | None = None
    cancelled_at: int | None = None
    exit_code: int | None = None
    success: bool | None = None
    error_phase: str | None = None
    message: str | None = None


SENT = Cmd(sent_at=NOW - 9 * S)
DELIVERED = replace(SENT, delivered_at=NOW - 8 * S)
RUNNING = replace(DELIVERED, acked_at=NOW - 7 * S)
FINISHED = replace(RUNNING, handled_at=NOW)


@pytest.mark.parametrize(
    ("cmd", "text", "color", "cancellable"),
    [
        pytest.param(
            Cmd(scheduled_at=NOW + 60 * S), "Scheduled", "secondary", True, id="scheduled"
        ),
        pytest.param(Cmd(), "Queued", "secondary", True, id="queued"),
        pytest.param(Cmd(scheduled_at=NOW), "Queued", "secondary", True, id="due-now"),
        pytest.param(SENT, "Sent", "info", False, id="sent"),
        pytest.param(DELIVERED, "Delivered", "info", False, id="delivered"),
        pytest.param(RUNNING, "Running", "warning", False, id="running"),
        pytest.param(
            replace(FINISHED, exit_code=0, success=True), "Success", "success", False, id="success"
        ),
        pytest.param(
            replace(FINISHED, exit_code=2, success=False), "Failed", "danger", False, id="failed"
        ),
        pytest.param(
            replace(FINISHED, exit_code=124, success=False, error_phase="timeout"),
            "Timed out",
            "danger",
            False,
            id="timeout",
        ),
        pytest.param(
            replace(FINISHED, exit_code=127, success=False, error_phase="start", message="no user"),
            "Error",
            "danger",
            False,
            id="start-error",
        ),
        pytest.param(
            replace(FINISHED, exit_code=-1, success=False, error_phase="interrupted"),
            "Interrupted",
            "danger",
            False,
            id="interrupted",
        ),
        pytest.param(
            replace(FINISHED, exit_code=143, success=False, error_phase="stopped"),
            "Stopped",
            "danger",
            False,
            id="stopped",
        ),
        pytest.param(
            Cmd(cancelled_at=NOW - 5 * S), "Cancelled", "secondary", False, id="cancelled"
        ),
        pytest.param(
            Cmd(scheduled_at=NOW + 60 * S, cancelled_at=NOW),
            "Cancelled",
            "secondary",
            False,
            id="cancelled-scheduled",
        ),
    ],
)
def test_status_table(cmd: Cmd, text: str, color: str, cancellable: bool) -> None:
    status = command_status(cmd, now=NOW)
    assert (status.text, status.color, status.cancellable) == (text, color, cancellable)
    assert status.message
    assert status.as_dict() == {
        "text": text,
        "color": color,
        "cancellable": cancellable,
        "message": status.message,
    }


def test_messages() -> None:
    assert command_status(replace(FINISHED, exit_code=0, success=True), now=NOW).message == (
        "Finished at 2024-01-15 10:30:45"
    )
    assert command_status(Cmd(scheduled_at=NOW + 15 * S), now=NOW).message == (
        "Scheduled for 2024-01-15 10:31:00"
    )
    assert command_status(Cmd(), now=NOW).message == "Waiting for the server"
    start = replace(
        FINISHED, exit_code=127, success=False, error_phase="start", message="no user x"
    )
    assert command_status(start, now=NOW).message == "no user x"


def test_unknown_error_phase_is_an_error() -> None:
    cmd = replace(FINISHED, exit_code=1, success=False, error_phase="spool")
    assert command_status(cmd, now=NOW).text == "Error"


def test_exit_zero_reported_unsuccessful_is_not_success() -> None:
    cmd = replace(FINISHED, exit_code=0, success=False)
    assert command_status(cmd, now=NOW).text == "Failed"


def test_response_delay() -> None:
    assert response_delay(Cmd()) is None
    assert response_delay(DELIVERED) is None
    assert response_delay(RUNNING) == pytest.approx(3.0)
    late = Cmd(scheduled_at=NOW, acked_at=NOW + 125_000)
    assert response_delay(late) == 0.125
    # The agent's clock may be behind ours: a negative delay is reported as measured.
    assert response_delay(Cmd(scheduled_at=NOW, acked_at=NOW - S)) == -1.0
