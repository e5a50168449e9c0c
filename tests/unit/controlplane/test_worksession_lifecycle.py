"""The work-session state machine, without an event loop: every transition, every
illegal one, the clock-driven moves, and hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from fleetgate.controlplane.worksession.lifecycle import (
    LIVE,
    TERMINAL,
    TRANSITIONS,
    Action,
    InvalidTransition,
    Status,
    next_due,
    settle,
    transition,
)


LEGAL = [
    (Status.PENDING, Action.APPROVE, Status.APPROVED),
    (Status.PENDING, Action.REJECT, Status.REJECTED),
    (Status.PENDING, Action.CANCEL, Status.CANCELLED),
    (Status.PENDING, Action.EXPIRE, Status.EXPIRED),
    (Status.PENDING, Action.UPDATE, Status.PENDING),
    (Status.APPROVED, Action.ACTIVATE, Status.ACTIVE),
    (Status.APPROVED, Action.START, Status.ACTIVE),
    (Status.APPROVED, Action.REVOKE, Status.REVOKED),
    (Status.APPROVED, Action.EXPIRE, Status.EXPIRED),
    (Status.APPROVED, Action.EXTEND, Status.APPROVED),
    (Status.APPROVED, Action.UPDATE, Status.APPROVED),
    (Status.ACTIVE, Action.COMPLETE, Status.COMPLETED),
    (Status.ACTIVE, Action.REVOKE, Status.REVOKED),
    (Status.ACTIVE, Action.EXPIRE, Status.EXPIRED),
    (Status.ACTIVE, Action.EXTEND, Status.ACTIVE),
    (Status.ACTIVE, Action.UPDATE, Status.ACTIVE),
    # Approved means frozen: a non-superuser's change goes back for approval.
    (Status.PENDING, Action.AMEND, Status.PENDING),
    (Status.APPROVED, Action.AMEND, Status.PENDING),
    (Status.ACTIVE, Action.AMEND, Status.PENDING),
]
ILLEGAL = [(s, a) for s in Status for a in Action if (s, a) not in {(x, y) for x, y, _ in LEGAL}]


def test_an_amended_session_is_unusable_until_approved_again() -> None:
    """Frozen: amend, then the only ways on are approve (and the clock's start), reject,
    cancel or expiry; an amended session never becomes active without an approval."""
    status = transition(Status.ACTIVE, Action.AMEND)
    assert status is Status.PENDING
    for action in (Action.ACTIVATE, Action.START, Action.COMPLETE, Action.EXTEND):
        with pytest.raises(InvalidTransition):
            transition(status, action)
    assert settle(status, starts_at=0, expires_at=10, now=5).status is Status.PENDING
    approved = transition(status, Action.APPROVE)
    assert settle(approved, starts_at=0, expires_at=10, now=5).status is Status.ACTIVE


@pytest.mark.parametrize(("status", "action", "expected"), LEGAL)
def test_every_legal_transition(status: Status, action: Action, expected: Status) -> None:
    assert transition(status, action) is expected


def test_the_table_is_exactly_the_documented_lifecycle() -> None:
    assert {(s, a): t for s, a, t in LEGAL} == TRANSITIONS


@pytest.mark.parametrize(("status", "action"), ILLEGAL)
def test_every_illegal_transition_raises_with_the_current_state(
    status: Status, action: Action
) -> None:
    with pytest.raises(InvalidTransition) as info:
        transition(status, action)
    assert info.value.status is status
    assert info.value.action is action
    assert status.value in str(info.value)


def test_settle_starts_an_approved_session_at_its_start_time() -> None:
    early = settle(Status.APPROVED, starts_at=100, expires_at=200, now=99)
    assert early.status is Status.APPROVED
    assert early.moves == ()
    started = settle(Status.APPROVED, starts_at=100, expires_at=200, now=150)
    assert started.status is Status.ACTIVE
    assert started.moves == ((Action.START, Status.ACTIVE, 100),)


def test_settle_expires_at_expires_at_and_reports_when_it_was_due() -> None:
    both = settle(Status.APPROVED, starts_at=100, expires_at=200, now=500)
    assert both.status is Status.EXPIRED
    assert both.moves == (
        (Action.START, Status.ACTIVE, 100),
        (Action.EXPIRE, Status.EXPIRED, 200),
    )
    assert settle(Status.PENDING, starts_at=0, expires_at=200, now=200).status is Status.EXPIRED
    assert settle(Status.ACTIVE, starts_at=0, expires_at=200, now=199).status is Status.ACTIVE


def test_next_due() -> None:
    assert next_due(Status.APPROVED, starts_at=100, expires_at=200) == 100
    assert next_due(Status.ACTIVE, starts_at=100, expires_at=200) == 200
    assert next_due(Status.PENDING, starts_at=100, expires_at=200) == 200
    for status in TERMINAL:
        assert next_due(status, starts_at=100, expires_at=200) is None


@settings(deadline=None)  # a loaded CI machine must not fail pure logic on time
@given(st.lists(st.sampled_from(list(Action)), max_size=30))
def test_random_action_sequences_stay_in_the_lifecycle(actions: list[Action]) -> None:
    status = Status.PENDING
    seen_terminal: Status | None = None
    for action in actions:
        try:
            new = transition(status, action)
        except InvalidTransition:
            continue
        assert (status, action) in TRANSITIONS
        assert new in set(Status)
        if seen_terminal is not None:
            pytest.fail(f"left terminal {seen_terminal} by {action}")
        # Only forward along the lifecycle, except that an amend sends a live session back
        # to pending (approved means frozen); approved only from pending.
        assert new is not Status.PENDING or status is Status.PENDING or action is Action.AMEND
        assert new is not Status.APPROVED or status in (Status.PENDING, Status.APPROVED)
        if new in TERMINAL:
            seen_terminal = new
        status = new


@settings(deadline=None)  # a loaded CI machine must not fail pure logic on time
@given(st.sampled_from(sorted(TERMINAL)), st.sampled_from(list(Action)))
def test_terminal_states_are_absorbing(status: Status, action: Action) -> None:
    with pytest.raises(InvalidTransition):
        transition(status, action)


@settings(deadline=None)  # a loaded CI machine must not fail pure logic on time
@given(
    st.sampled_from(list(Status)),
    st.integers(0, 10_000),
    st.integers(1, 10_000),
    st.integers(0, 30_000),
)
def test_settle_is_idempotent_and_never_leaves_a_due_move(
    status: Status, starts_at: int, length: int, now: int
) -> None:
    expires_at = starts_at + length
    once = settle(status, starts_at=starts_at, expires_at=expires_at, now=now)
    again = settle(once.status, starts_at=starts_at, expires_at=expires_at, now=now)
    assert again.status is once.status
    assert again.moves == ()
    if status in TERMINAL:
        assert once.status is status
    if once.status in LIVE:
        assert now < expires_at
        due = next_due(once.status, starts_at=starts_at, expires_at=expires_at)
        assert due is not None
        assert due > now
