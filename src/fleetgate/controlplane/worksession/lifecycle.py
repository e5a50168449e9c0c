"""The work-session lifecycle: a transition table and the time-driven moves. No I/O.

``pending → approved → active → completed | expired | revoked``; ``pending → rejected``;
``pending → cancelled``. Approved means frozen: a change by anyone but a superuser
(``amend``: scopes, servers, sudo patterns, a later expiry) sends a live session back to
``pending``, to be approved again; a superuser's change (``update``, ``extend``) keeps
the status. A pending, approved or active session whose ``expires_at`` has
passed is expired; an approved session whose ``starts_at`` has come is active. Terminal
states are absorbing: no action leaves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


__all__ = [
    "LIVE",
    "TERMINAL",
    "TRANSITIONS",
    "Action",
    "InvalidTransition",
    "Settled",
    "Status",
    "next_due",
    "settle",
    "transition",
]


class Status(StrEnum):
    """A session's state (the API's ``status``)."""

    PENDING = "pending"
    APPROVED = "approved"
    ACTIVE = "active"
    COMPLETED = "completed"
    EXPIRED = "expired"
    REVOKED = "revoked"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


class Action(StrEnum):
    """What can happen to a session. ``start`` and ``expire`` are driven by the clock."""

    APPROVE = "approve"
    REJECT = "reject"
    CANCEL = "cancel"
    ACTIVATE = "activate"
    START = "start"
    COMPLETE = "complete"
    REVOKE = "revoke"
    EXPIRE = "expire"
    EXTEND = "extend"
    UPDATE = "update"
    AMEND = "amend"
    """A change made by a non-superuser: back to ``pending`` for approval."""


LIVE = frozenset({Status.PENDING, Status.APPROVED, Status.ACTIVE})
"""States that can still change."""
TERMINAL = frozenset(set(Status) - LIVE)
"""Absorbing states."""

TRANSITIONS: dict[tuple[Status, Action], Status] = {
    (Status.PENDING, Action.APPROVE): Status.APPROVED,
    (Status.PENDING, Action.REJECT): Status.REJECTED,
    (Status.PENDING, Action.CANCEL): Status.CANCELLED,
    (Status.PENDING, Action.EXPIRE): Status.EXPIRED,
    (Status.PENDING, Action.UPDATE): Status.PENDING,
    (Status.PENDING, Action.AMEND): Status.PENDING,
    (Status.APPROVED, Action.AMEND): Status.PENDING,
    (Status.ACTIVE, Action.AMEND): Status.PENDING,
    (Status.APPROVED, Action.ACTIVATE): Status.ACTIVE,
    (Status.APPROVED, Action.START): Status.ACTIVE,
    (Status.APPROVED, Action.REVOKE): Status.REVOKED,
    (Status.APPROVED, Action.EXPIRE): Status.EXPIRED,
    (Status.APPROVED, Action.EXTEND): Status.APPROVED,
    (Status.APPROVED, Action.UPDATE): Status.APPROVED,
    (Status.ACTIVE, Action.COMPLETE): Status.COMPLETED,
    (Status.ACTIVE, Action.REVOKE): Status.REVOKED,
    (Status.ACTIVE, Action.EXPIRE): Status.EXPIRED,
    (Status.ACTIVE, Action.EXTEND): Status.ACTIVE,
    (Status.ACTIVE, Action.UPDATE): Status.ACTIVE,
}
"""Every legal ``(state, action) -> state``; anything else is an illegal transition."""


class InvalidTransition(Exception):
    """``action`` is not allowed in ``status``."""

    def __init__(self, status: Status, action: Action) -> None:
        super().__init__(f"cannot {action.value} a work session that is {status.value}")
        self.status = status
        self.action = action


def transition(status: Status, action: Action) -> Status:
    """The state after ``action``.

    Raises:
        InvalidTransition: the table has no entry for ``(status, action)``.
    """
    try:
        return TRANSITIONS[(status, action)]
    except KeyError:
        raise InvalidTransition(status, action) from None


@dataclass(frozen=True)
class Settled:
    """A state after the clock-driven moves, and those moves with their times."""

    status: Status
    moves: tuple[tuple[Action, Status, int], ...]
    """``(action, new status, when)``: when it was due, not when it was noticed."""


def settle(status: Status, *, starts_at: int, expires_at: int, now: int) -> Settled:
    """Apply every clock-driven move due at ``now`` (at most two: start, then expire)."""
    moves: list[tuple[Action, Status, int]] = []
    if status is Status.APPROVED and starts_at <= now and starts_at < expires_at:
        status = transition(status, Action.START)
        moves.append((Action.START, status, starts_at))
    if status in LIVE and now >= expires_at:
        status = transition(status, Action.EXPIRE)
        moves.append((Action.EXPIRE, status, expires_at))
    return Settled(status, tuple(moves))


def next_due(status: Status, *, starts_at: int, expires_at: int) -> int | None:
    """When the next clock-driven move of this session is due (``None``: never)."""
    if status is Status.APPROVED and starts_at < expires_at:
        return starts_at
    if status in LIVE:
        return expires_at
    return None
