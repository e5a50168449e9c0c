"""Bodies of the work-session API and their validation (pure: no I/O)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from fleetgate.controlplane.errors import invalid_request
from fleetgate.controlplane.timeutil import iso, to_us
from fleetgate.controlplane.worksession.durations import parse_duration
from fleetgate.controlplane.worksession.gate import SCOPES
from fleetgate.shared.sudo_patterns import SudoPatternError, parse_pattern


__all__ = [
    "DEFAULT_SCOPES",
    "MAX_DESCRIPTION",
    "OWNER_ENABLED_SCOPES",
    "ApproveBody",
    "CreateBody",
    "ExtendBody",
    "SudoPolicy",
    "UpdateBody",
    "extended_expiry",
    "parse_policies",
    "parse_scope_list",
    "parse_scopes",
    "parse_window",
]

DEFAULT_SCOPES = ("websh", "webftp", "command", "sudo")
"""Selected by default in the request guide."""
OWNER_ENABLED_SCOPES = ("tunnel", "editor")
"""Scopes a server offers only when its owner enabled them (the agent's ``hello``
lists them in ``features``)."""
MAX_DESCRIPTION = 2048


class SudoPolicy(BaseModel):
    """One declared set of sudo command patterns (stored as given)."""

    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    commands: list[str] = Field(min_length=1, max_length=100)
    reason: str = Field(default="", max_length=1024)


class CreateBody(BaseModel):
    """``POST /api/work-sessions/sessions/``."""

    model_config = ConfigDict(extra="ignore")
    description: str = Field(validation_alias=AliasChoices("description", "purpose"))
    servers: list[str] = Field(min_length=1, max_length=1000)
    scopes: list[str] | None = None
    assigned_user: int | str | None = None
    requester_type: Literal["user", "agent"] = "user"
    duration: str | None = None
    starts_at: datetime | None = None
    expires_at: datetime | None = None
    sudo_policies: list[SudoPolicy] | None = None


class ApproveBody(BaseModel):
    """``POST .../approve/``: optionally narrow the request before approving it."""

    model_config = ConfigDict(extra="ignore")
    scopes: list[str] | None = Field(default=None, max_length=len(SCOPES))
    servers: list[str] | None = Field(default=None, max_length=1000)


class ExtendBody(BaseModel):
    """``POST .../extend/``: a new ``expires_at`` or a ``duration`` added from now."""

    model_config = ConfigDict(extra="ignore")
    expires_at: datetime | None = None
    duration: str | None = None


class UpdateBody(BaseModel):
    """``PATCH .../<id>/``: replace the scopes, the servers or the sudo policies."""

    model_config = ConfigDict(extra="ignore")
    sudo_policies: list[SudoPolicy] | None = None
    scopes: list[str] | None = Field(default=None, max_length=len(SCOPES))
    servers: list[str] | None = Field(default=None, min_length=1, max_length=1000)


def parse_policies(policies: list[SudoPolicy] | None) -> list[dict[str, Any]]:
    """Stored policies: patterns trimmed, each with an ``id`` (kept when given)."""
    out = []
    for policy in policies or []:
        commands = [c.strip() for c in policy.commands]
        if any(not c or len(c) > 4096 for c in commands):
            raise invalid_request("sudo_policies: patterns must be non-empty strings", "sudo")
        for command in commands:
            try:
                parse_pattern(command)
            except SudoPatternError as exc:
                raise invalid_request(f"sudo_policies: {exc}", "sudo_policies") from None
        out.append(
            {"id": policy.id or uuid.uuid4().hex, "commands": commands, "reason": policy.reason}
        )
    return out


def parse_scopes(body: CreateBody) -> tuple[str, ...]:
    """The requested scopes (default set when absent; sudo patterns add ``sudo``)."""
    scopes = list(DEFAULT_SCOPES if body.scopes is None else body.scopes)
    if body.sudo_policies and "sudo" not in scopes:
        scopes.append("sudo")
    return parse_scope_list(scopes)


def parse_scope_list(scopes: list[str]) -> tuple[str, ...]:
    """Known scopes, at least one, in :data:`SCOPES` order."""
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise invalid_request(f"scopes: unknown {bad[0]!r}; valid: {', '.join(SCOPES)}", "scopes")
    if not scopes:
        raise invalid_request("scopes: at least one scope is required", "scopes")
    return tuple(s for s in SCOPES if s in scopes)


def parse_window(body: CreateBody, now: int, max_us: int) -> tuple[int, int]:
    """``(starts_at, expires_at)`` of a create, within the maximum duration."""
    starts_at = now if body.starts_at is None else max(now, to_us(body.starts_at))
    if (body.duration is None) == (body.expires_at is None):
        raise invalid_request("give exactly one of duration and expires_at", "expires_at")
    if body.duration is not None:
        try:
            expires_at = starts_at + parse_duration(body.duration) * 1_000_000
        except ValueError as exc:
            raise invalid_request(f"duration: {exc}", "duration") from None
    else:
        assert body.expires_at is not None
        expires_at = to_us(body.expires_at)
    if expires_at <= starts_at:
        raise invalid_request("expires_at: must be after the start", "expires_at")
    if expires_at - starts_at > max_us:
        raise invalid_request(
            f"expires_at: longer than the maximum of {max_us // 60_000_000} minutes", "expires_at"
        )
    return starts_at, expires_at


def extended_expiry(
    body: ExtendBody,
    current: int,
    starts_at: int,
    now: int,
    max_us: int,
    *,
    from_start: bool = False,
) -> int:
    """The new ``expires_at`` of an extend: later than ``current``, at most the maximum
    duration after ``now`` (or after the start, for a session that has not started);
    with ``from_start`` at most the maximum after the start, however often it is extended."""
    if (body.duration is None) == (body.expires_at is None):
        raise invalid_request("give exactly one of duration and expires_at", "expires_at")
    if body.duration is not None:
        try:
            expires_at = max(now, current) + parse_duration(body.duration) * 1_000_000
        except ValueError as exc:
            raise invalid_request(f"duration: {exc}", "duration") from None
    else:
        assert body.expires_at is not None
        expires_at = to_us(body.expires_at)
    if expires_at <= current:
        raise invalid_request(
            f"expires_at: must be later than the current {iso(current)}", "expires_at"
        )
    base = starts_at if from_start else max(now, starts_at)
    if expires_at - base > max_us:
        raise invalid_request(
            f"expires_at: beyond the maximum of {max_us // 60_000_000} minutes", "expires_at"
        )
    return expires_at
