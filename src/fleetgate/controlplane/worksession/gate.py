"""The work-session gate: may this caller run this operation on this server? No I/O.

Principals authenticated with a ``login`` token need an active work session that is
assigned to them, includes the target server and the operation's scope. The checks run
in a fixed order so that the first failing one names the most useful fix.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from fleetgate.controlplane.worksession.lifecycle import Status


__all__ = ["GATE_CODES", "SCOPES", "GateDenial", "SessionView", "check_gate"]

SCOPES = ("websh", "command", "webftp", "tunnel", "sudo", "editor")
"""Valid scopes, in the order of the request guide."""

GATE_CODES = (
    "work_session_required",
    "work_session_not_active",
    "work_session_expired",
    "work_session_scope_not_allowed",
    "work_session_server_not_allowed",
    "work_session_assignee_mismatch",
    "work_session_not_usable",
)


@dataclass(frozen=True)
class SessionView:
    """What the gate needs to know of a session (its status already settled)."""

    id: str
    status: Status
    assigned_user: int | None
    server_ids: Collection[str]
    scopes: Collection[str]


@dataclass(frozen=True)
class GateDenial:
    """A refusal: one of :data:`GATE_CODES` and a human detail."""

    code: str
    detail: str


def check_gate(
    session: SessionView | None,
    *,
    requested: str | None,
    user_id: int | None,
    server_id: str,
    server_name: str,
    scope: str,
) -> GateDenial | None:
    """``None`` when the operation may go ahead, else why not.

    ``requested`` is the session id the caller named (``None``: none); ``session`` is that
    session, or ``None`` when it does not exist.
    """
    if not requested:
        return GateDenial("work_session_required", "WorkSession required")
    if session is None:
        return GateDenial("work_session_not_usable", f"work session {requested} does not exist")
    if session.assigned_user is None or session.assigned_user != user_id:
        return GateDenial(
            "work_session_assignee_mismatch",
            f"work session {session.id} is assigned to another principal",
        )
    if session.status is Status.EXPIRED:
        return GateDenial("work_session_expired", f"work session {session.id} has expired")
    if session.status in (Status.PENDING, Status.APPROVED):
        return GateDenial(
            "work_session_not_active",
            f"work session {session.id} is {session.status.value}, not active",
        )
    if session.status is not Status.ACTIVE:
        return GateDenial(
            "work_session_not_usable",
            f"work session {session.id} is {session.status.value}",
        )
    if server_id not in session.server_ids:
        return GateDenial(
            "work_session_server_not_allowed",
            f"server {server_name!r} is not in work session {session.id}",
        )
    if scope not in session.scopes:
        return GateDenial(
            "work_session_scope_not_allowed",
            f"scope {scope!r} is not in work session {session.id}",
        )
    return None
