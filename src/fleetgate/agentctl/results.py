"""The outcome of a command object: its status, the exit code agentctl returns, its JSON.

Pure functions shared by `exec`, `exec logs` and, later, `websh SERVER "cmd"`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetgate.agentctl.errors import EXIT_FAILURE


# Status texts (docs/api.md, plus the reference CLI's lower-case words) of a command that ended.
TERMINAL_STATUSES = frozenset(
    {
        "success",
        "failed",
        "timed out",
        "error",
        "interrupted",
        "stopped",
        "cancelled",
        "completed",
        "stuck",
        "rejected",
        "denied",
    }
)


def status_text(command: Mapping[str, Any]) -> str:
    """The status word of a command (an object `{text, ...}` here, a string elsewhere)."""
    status = command.get("status")
    if isinstance(status, Mapping):
        return str(status.get("text") or "")
    return str(status or "")


def is_finished(command: Mapping[str, Any]) -> bool:
    """True once the command has a final state."""
    return status_text(command).lower() in TERMINAL_STATUSES


def outcome(command: Mapping[str, Any]) -> tuple[int, str | None]:
    """The exit code agentctl returns for a finished command, and an error line if any.

    The remote exit code passes through; an `error_phase` (could not start, timed out,
    interrupted) or a missing exit code (cancelled) is explained, and a null code becomes 1.
    """
    code = command.get("exit_code")
    exit_code = int(code) if isinstance(code, int) else EXIT_FAILURE
    if command.get("error_phase") or code is None:
        status = command.get("status")
        message = status.get("message") if isinstance(status, Mapping) else None
        text = status_text(command) or str(command.get("error_phase") or "failed")
        return exit_code, f"agentctl: {text}: {message or command.get('error_phase') or ''}"
    return exit_code, None


def result_document(command: Mapping[str, Any], output: str) -> dict[str, Any]:
    """The one JSON object `exec --output json` and `exec logs --output json` print."""
    keys = ("id", "exit_code", "success")
    timing = ("elapsed_time", "delivered_at", "acked_at", "handled_at", "response_delay")
    doc: dict[str, Any] = {k: command.get(k) for k in keys}
    doc["status"] = status_text(command)
    doc.update({k: command.get(k) for k in timing})
    doc["error_phase"] = command.get("error_phase")
    doc["output"] = output
    return doc
