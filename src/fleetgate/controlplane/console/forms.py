"""The request form: its defaults and the translation of a submitted form into the API's
create body. Pure: no I/O. Every rule is enforced again by the API itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleetgate.controlplane.api.worksession_bodies import (
    DEFAULT_SCOPES,
    MAX_DESCRIPTION,
    OWNER_ENABLED_SCOPES,
)
from fleetgate.controlplane.worksession.gate import SCOPES


__all__ = [
    "FEATURES",
    "OWNER_ENABLED",
    "PRESETS",
    "Feature",
    "FormError",
    "RequestForm",
    "parse_request_form",
]

PRESETS = ("1h", "2h", "4h")
"""Duration presets of the request guide."""
OWNER_ENABLED = frozenset(OWNER_ENABLED_SCOPES)
"""Features the server owner must enable on the server first."""


@dataclass(frozen=True)
class Feature:
    """One selectable feature of the form."""

    scope: str
    label: str
    badge: str
    """``user`` (launches in the browser) or ``agent`` (used from the CLI)."""


FEATURES = (
    Feature("websh", "Web terminal", "user"),
    Feature("webftp", "File transfer", "user"),
    Feature("command", "Execute commands", "user"),
    Feature("tunnel", "Port forwarding", "agent"),
    Feature("editor", "Code editor", "agent"),
    Feature("sudo", "Privilege elevation", "agent"),
)
assert {f.scope for f in FEATURES} == set(SCOPES)


class FormError(ValueError):
    """A rule of the form is broken; ``field`` names the input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class RequestForm:
    """What the form shows: its values (defaults or as submitted)."""

    purpose: str = ""
    servers: list[str] = field(default_factory=list)
    scopes: list[str] = field(default_factory=lambda: list(DEFAULT_SCOPES))
    assignee: str = ""
    mode: str = "preset"
    preset: str = "1h"
    start: str = "now"
    starts_at: str = ""
    hours: int = 1
    minutes: int = 0
    sudo: str = ""


def _int(value: str | None, name: str, maximum: int) -> int:
    try:
        number = int(value or "0")
    except ValueError:
        raise FormError(name, f"{name}: a whole number is required") from None
    if not 0 <= number <= maximum:
        raise FormError(name, f"{name}: between 0 and {maximum}")
    return number


def _starts_at(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise FormError("starts_at", "Scheduled start: not a date and time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_request_form(
    values: Mapping[str, str], lists: Mapping[str, Sequence[str]], *, max_seconds: int
) -> tuple[RequestForm, dict[str, Any]]:
    """The form as submitted and the API create body it stands for.

    Raises:
        FormError: a rule of the guide is broken (the form is re-shown with the message).
    """
    form = RequestForm(
        purpose=values.get("purpose", ""),
        servers=[s for s in lists.get("servers", ()) if s],
        scopes=[s for s in lists.get("scopes", ()) if s in SCOPES],
        assignee=values.get("assignee", "").strip(),
        mode=values.get("mode", "preset"),
        preset=values.get("preset", "1h"),
        start=values.get("start", "now"),
        starts_at=values.get("starts_at", ""),
        sudo=values.get("sudo", ""),
    )
    if not form.servers:
        raise FormError("servers", "Select at least one server.")
    purpose = form.purpose.replace("\r\n", "\n")
    form.purpose = purpose
    if not purpose.strip():
        raise FormError("purpose", "The purpose is required.")
    if len(purpose) > MAX_DESCRIPTION:
        raise FormError("purpose", f"The purpose is at most {MAX_DESCRIPTION:,} characters.")
    if not form.scopes:
        raise FormError("scopes", "Select at least one feature.")
    body: dict[str, Any] = {
        "description": purpose,
        "servers": form.servers,
        "scopes": form.scopes,
    }
    if form.assignee:
        body["assigned_user"] = form.assignee
    if form.mode == "custom":
        form.hours = _int(values.get("hours"), "hours", 10_000)
        form.minutes = _int(values.get("minutes"), "minutes", 59)
        seconds = form.hours * 3600 + form.minutes * 60
        if seconds <= 0:
            raise FormError("hours", "The length must be more than zero.")
        if form.start == "scheduled":
            body["starts_at"] = _starts_at(form.starts_at).isoformat()
        body["duration"] = f"{form.hours}h{form.minutes}m"
    else:
        if form.preset not in PRESETS:
            raise FormError("preset", f"Choose one of {', '.join(PRESETS)}.")
        seconds = int(form.preset[:-1]) * 3600
        body["duration"] = form.preset
    if seconds > max_seconds:
        raise FormError("hours", f"Longer than the workspace maximum of {_hours(max_seconds)}.")
    patterns = [line.strip() for line in form.sudo.splitlines() if line.strip()]
    if patterns:
        body["sudo_policies"] = [{"commands": patterns}]
    return form, body


def _hours(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h" + (f" {rest // 60} min" if rest >= 60 else "")


def max_label(seconds: int) -> str:
    """The workspace maximum in words (``4 h``)."""
    return _hours(seconds)
