"""The channel registry and revocations: pure, no event loop."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from fleetgate.controlplane.errors import ChannelFailed
from fleetgate.controlplane.hub.channelregistry import (
    MAX_REMEMBERED,
    ChannelOwner,
    ChannelRegistry,
    OpenChannel,
    Revocation,
)
from fleetgate.controlplane.hub.revocation import session_revocation
from fleetgate.controlplane.store.worksessions import WorkSessionRow
from fleetgate.controlplane.worksession.lifecycle import Status
from fleetgate.shared.protocol.channels import CLOSE_REFUSED, REVOCATION_CODES


ALICE = ChannelOwner("tok-a", 1, "ws-1")
ALICE_OTHER_TOKEN = ChannelOwner("tok-a2", 1, None)
BOB = ChannelOwner("tok-b", 2, "ws-2")
SERVICE = ChannelOwner("tok-s", None, None)


def channel(owner: ChannelOwner, kind: str = "websh", resource: str | None = None) -> OpenChannel:
    return OpenChannel(uuid.uuid4(), kind, "server-1", owner, resource_id=resource)


@pytest.mark.parametrize(
    ("revocation", "ended"),
    [
        (Revocation("token_revoked", "gone", token_id="tok-a"), {ALICE}),
        (Revocation("user_disabled", "off", user_id=1), {ALICE, ALICE_OTHER_TOKEN}),
        (Revocation("work_session_revoked", "no", work_session_id="ws-2"), {BOB}),
        (Revocation("token_revoked", "gone", token_id="tok-s"), {SERVICE}),
        (Revocation("token_revoked", "gone", token_id="nobody"), set()),
    ],
)
def test_a_revocation_ends_exactly_the_channels_it_covers(
    revocation: Revocation, ended: set[ChannelOwner]
) -> None:
    registry = ChannelRegistry()
    channels = [channel(o) for o in (ALICE, ALICE_OTHER_TOKEN, BOB, SERVICE)]
    for c in channels:
        registry.register(c)
    hit = registry.revoke(revocation)
    assert {c.owner for c in hit} == ended
    for c in channels:
        assert c.ended.is_set() == (c.owner in ended)
        assert c.why == ((revocation.code, revocation.detail) if c.owner in ended else None)


def test_a_user_revocation_never_matches_services() -> None:
    """``user_id=None`` of a service must not match a revocation without a user."""
    assert not Revocation("token_revoked", "x", token_id="t").matches(SERVICE)
    assert not Revocation("work_session_revoked", "x", work_session_id="w").matches(SERVICE)


def test_a_channel_registered_after_its_revocation_is_refused() -> None:
    """The gate passed before the token was deleted; registering afterwards fails."""
    registry = ChannelRegistry()
    registry.revoke(Revocation("token_revoked", "the token was deleted", token_id="tok-a"))
    late = channel(ALICE)
    with pytest.raises(ChannelFailed) as refused:
        registry.register(late)
    assert (refused.value.code, refused.value.close_code) == ("token_revoked", CLOSE_REFUSED)
    assert registry.matching(lambda _: True) == []
    registry.register(channel(BOB))  # others are not affected


def test_an_enabled_user_may_open_channels_again() -> None:
    registry = ChannelRegistry()
    registry.revoke(Revocation("user_disabled", "off", user_id=1))
    registry.revoke(Revocation("token_revoked", "gone", token_id="tok-a"))
    with pytest.raises(ChannelFailed):
        registry.register(channel(ALICE_OTHER_TOKEN))
    registry.reinstate_user(1)
    registry.register(channel(ALICE_OTHER_TOKEN))
    with pytest.raises(ChannelFailed) as still:
        registry.register(channel(ALICE))  # a deleted token stays deleted
    assert still.value.code == "token_revoked"


def test_resources_count_and_end_their_own_channels() -> None:
    registry = ChannelRegistry()
    streams = [channel(ALICE, "tunnel", "tunnel-1") for _ in range(3)]
    other = channel(ALICE, "tunnel", "tunnel-2")
    for c in [*streams, other]:
        registry.register(c)
    assert registry.count("tunnel-1") == 3
    assert len(registry.end_resource("tunnel-1", "TUNNEL_CLOSED", "closed")) == 3
    assert not other.ended.is_set()
    for c in streams:
        registry.unregister(c)
        registry.unregister(c)  # twice is harmless
    assert registry.count("tunnel-1") == 0
    assert registry.count("tunnel-2") == 1


def test_the_first_reason_wins() -> None:
    c = channel(ALICE)
    assert c.end("work_session_expired", "expired")
    assert not c.end("token_revoked", "later")
    assert c.why == ("work_session_expired", "expired")


def test_the_registry_is_bounded() -> None:
    registry = ChannelRegistry(max_open=2)
    registry.register(channel(ALICE))
    registry.register(channel(BOB))
    with pytest.raises(ChannelFailed) as busy:
        registry.register(channel(SERVICE))
    assert busy.value.code == "busy"


def _session(status: Status) -> WorkSessionRow:
    row = WorkSessionRow(
        id="ws-9",
        description="d",
        status=Status.ACTIVE,
        requester_type="user",
        scopes=("websh",),
        server_ids=("s",),
        sudo_policies=(),
        created_by=1,
        created_by_name="a",
        created_by_email="",
        assigned_user=1,
        assigned_name="a",
        assigned_email="",
        starts_at=0,
        expires_at=1,
        started_at=0,
        completed_at=None,
        added_at=0,
        updated_at=0,
    )
    return replace(row, status=status)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (Status.REVOKED, "work_session_revoked"),
        (Status.COMPLETED, "work_session_completed"),
        (Status.EXPIRED, "work_session_expired"),
        (Status.CANCELLED, "work_session_not_usable"),
    ],
)
def test_an_ended_session_revokes_with_its_own_code(status: Status, code: str) -> None:
    revocation = session_revocation(_session(status))
    assert revocation.code == code
    assert revocation.work_session_id == "ws-9"
    assert revocation.token_id is None
    assert revocation.user_id is None
    if code != "work_session_not_usable":
        assert code in REVOCATION_CODES


def test_remembered_revocations_are_bounded_oldest_first() -> None:
    registry = ChannelRegistry()
    for n in range(MAX_REMEMBERED + 1):
        registry.revoke(Revocation("token_revoked", "gone", token_id=f"tok-{n}"))
    assert registry.revoked(ChannelOwner("tok-0", None, None)) is None  # forgotten
    newest = registry.revoked(ChannelOwner(f"tok-{MAX_REMEMBERED}", None, None))
    assert newest is not None
    assert newest.code == "token_revoked"
