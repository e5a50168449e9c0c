"""The pure work-session gate and duration parsing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from fleetgate.controlplane.worksession.durations import parse_duration
from fleetgate.controlplane.worksession.gate import GATE_CODES, SessionView, check_gate
from fleetgate.controlplane.worksession.lifecycle import Status


SERVER = "11111111-1111-4111-8111-111111111111"
OTHER = "22222222-2222-4222-8222-222222222222"


def view(status: Status = Status.ACTIVE, **kw: object) -> SessionView:
    fields: dict[str, object] = {
        "id": "ws-1",
        "status": status,
        "assigned_user": 7,
        "server_ids": (SERVER,),
        "scopes": ("command",),
    }
    fields.update(kw)
    return SessionView(**fields)  # type: ignore[arg-type]


def code(session: SessionView | None, requested: str | None = "ws-1", **kw: object) -> str | None:
    args: dict[str, object] = {"user_id": 7, "server_id": SERVER, "scope": "command"}
    args.update(kw)
    denial = check_gate(
        session,
        requested=requested,
        user_id=args["user_id"],  # type: ignore[arg-type]
        server_id=str(args["server_id"]),
        server_name="web-01",
        scope=str(args["scope"]),
    )
    return None if denial is None else denial.code


def test_an_active_matching_session_passes() -> None:
    assert code(view()) is None


@pytest.mark.parametrize(
    ("session", "requested", "kw", "expected"),
    [
        (None, None, {}, "work_session_required"),
        (None, "nope", {}, "work_session_not_usable"),
        (view(assigned_user=8), "ws-1", {}, "work_session_assignee_mismatch"),
        (view(Status.PENDING), "ws-1", {}, "work_session_not_active"),
        (view(Status.APPROVED), "ws-1", {}, "work_session_not_active"),
        (view(Status.EXPIRED), "ws-1", {}, "work_session_expired"),
        (view(Status.COMPLETED), "ws-1", {}, "work_session_not_usable"),
        (view(Status.REVOKED), "ws-1", {}, "work_session_not_usable"),
        (view(Status.REJECTED), "ws-1", {}, "work_session_not_usable"),
        (view(Status.CANCELLED), "ws-1", {}, "work_session_not_usable"),
        (view(), "ws-1", {"server_id": OTHER}, "work_session_server_not_allowed"),
        (view(), "ws-1", {"scope": "websh"}, "work_session_scope_not_allowed"),
    ],
)
def test_each_code(
    session: SessionView | None, requested: str | None, kw: dict[str, object], expected: str
) -> None:
    assert code(session, requested, **kw) == expected


def test_all_seven_codes_are_covered() -> None:
    assert len(GATE_CODES) == 7


@settings(deadline=None)  # a loaded CI machine must not fail pure logic on time
@given(
    st.sampled_from(list(Status)),
    st.sampled_from([7, 8, None]),
    st.sampled_from([SERVER, OTHER]),
    st.sampled_from(["command", "websh", "sudo"]),
)
def test_only_an_active_own_session_with_server_and_scope_passes(
    status: Status, assignee: int | None, server: str, scope: str
) -> None:
    result = code(view(status, assigned_user=assignee), server_id=server, scope=scope)
    allowed = status is Status.ACTIVE and assignee == 7 and server == SERVER and scope == "command"
    assert (result is None) == allowed
    assert result is None or result in GATE_CODES


@pytest.mark.parametrize(
    ("text", "seconds"), [("1h", 3600), ("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0h", "1", "h", "30m1h", "1h 2m", "-1h", "1d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
