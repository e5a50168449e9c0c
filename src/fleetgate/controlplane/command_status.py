"""The command ``status`` object and ``response_delay``: pure functions of a command row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fleetgate.controlplane.timeutil import format_human


__all__ = ["CommandState", "Status", "command_status", "response_delay"]


class CommandState(Protocol):
    """The fields of a command the status depends on (a ``CommandRow`` has them)."""

    @property
    def scheduled_at(self) -> int: ...
    @property
    def sent_at(self) -> int | None: ...
    @property
    def delivered_at(self) -> int | None: ...
    @property
    def acked_at(self) -> int | None: ...
    @property
    def handled_at(self) -> int | None: ...
    @property
    def cancelled_at(self) -> int | None: ...
    @property
    def exit_code(self) -> int | None: ...
    @property
    def success(self) -> bool | None: ...
    @property
    def error_phase(self) -> str | None: ...
    @property
    def message(self) -> str | None: ...


@dataclass(frozen=True)
class Status:
    """``{text, color, cancellable, message}`` of the API."""

    text: str
    color: str
    cancellable: bool
    message: str

    def as_dict(self) -> dict[str, str | bool]:
        """The JSON object."""
        return {
            "text": self.text,
            "color": self.color,
            "cancellable": self.cancellable,
            "message": self.message,
        }


def command_status(cmd: CommandState, *, now: int) -> Status:
    """The status of ``cmd`` at time ``now`` (microseconds), per the table of docs/api.md."""
    if cmd.cancelled_at is not None:
        return Status(
            "Cancelled", "secondary", False, f"Cancelled at {format_human(cmd.cancelled_at)}"
        )
    if cmd.handled_at is not None:
        return _finished_status(cmd, cmd.handled_at)
    if cmd.acked_at is not None:
        return Status("Running", "warning", False, f"Started at {format_human(cmd.acked_at)}")
    if cmd.delivered_at is not None:
        return Status("Delivered", "info", False, f"Delivered at {format_human(cmd.delivered_at)}")
    if cmd.sent_at is not None:
        return Status("Sent", "info", False, f"Sent at {format_human(cmd.sent_at)}")
    if cmd.scheduled_at > now:
        return Status(
            "Scheduled", "secondary", True, f"Scheduled for {format_human(cmd.scheduled_at)}"
        )
    return Status("Queued", "secondary", True, "Waiting for the server")


def _finished_status(cmd: CommandState, handled_at: int) -> Status:
    finished = f"Finished at {format_human(handled_at)}"
    phase = cmd.error_phase
    if phase == "timeout":
        return Status("Timed out", "danger", False, cmd.message or f"Timed out; {finished}")
    if phase == "start":
        return Status("Error", "danger", False, cmd.message or "The command could not start")
    if phase == "denied":
        return Status("Denied", "danger", False, cmd.message or "Refused by the agent")
    if phase == "stopped":
        return Status("Stopped", "danger", False, cmd.message or "Stopped: its work session ended")
    if phase == "interrupted":
        return Status("Interrupted", "danger", False, cmd.message or "Interrupted by the agent")
    if cmd.exit_code == 0 and cmd.success is not False and phase is None:
        return Status("Success", "success", False, finished)
    if phase is not None:
        return Status("Error", "danger", False, cmd.message or f"{phase}; {finished}")
    return Status("Failed", "danger", False, f"Exit code {cmd.exit_code}; {finished}")


def response_delay(cmd: CommandState) -> float | None:
    """``acked_at - scheduled_at`` in seconds, or ``None`` before the command started."""
    if cmd.acked_at is None:
        return None
    return (cmd.acked_at - cmd.scheduled_at) / 1_000_000
