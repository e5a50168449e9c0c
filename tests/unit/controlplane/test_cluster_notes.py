"""The replicas' notes and hop tokens: pure, every refusal named."""

from __future__ import annotations

import uuid

import pytest

from fleetgate.controlplane.cluster.hoptoken import TOKEN_TTL, HopClaim, hop_token, verify_hop
from fleetgate.controlplane.cluster.notes import (
    MAX_NOTE_BYTES,
    MAX_WAKE_IDS,
    Note,
    NoteError,
    parse_note,
    wake_notes,
)


@pytest.mark.parametrize(
    "note",
    [
        Note("frame", "replica-a"),
        Note("chan", "7", str(uuid.uuid4())),
        Note("revoke", "99"),
        Note("link", str(uuid.uuid4()), "replica-a"),
        Note("unlink", str(uuid.uuid4()), "b"),
        Note("down", "a"),
        Note("wake", ",".join(str(uuid.uuid4()) for _ in range(3))),
    ],
)
def test_notes_round_trip(note: Note) -> None:
    text = note.encode()
    assert len(text.encode()) < 8000
    assert parse_note(text) == note


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("", "unknown note kind"),
        ("shout 1", "unknown note kind"),
        ("chan 1", "3 parts"),
        ("frame a b", "2 parts"),
        ("down a b", "2 parts"),
        ("chan 1 two words", "3 parts"),
        ("link $(id) a", "not a plain token"),
        ("down " + "x" * 129, "not a plain token"),
        ("wake a,,b", "not a plain token"),
        ("wake " + ",".join(["c"] * (MAX_WAKE_IDS + 1)), f"more than {MAX_WAKE_IDS}"),
        ("down " + "y" * (MAX_NOTE_BYTES + 1), "longer than a NOTIFY payload"),
    ],
)
def test_bad_notes_are_refused(payload: str, message: str) -> None:
    with pytest.raises(NoteError, match=message.replace("$", r"\$").replace("(", r"\(")):
        parse_note(payload)


def test_a_note_that_would_not_parse_is_not_sent() -> None:
    with pytest.raises(NoteError):
        Note("down", "two words").encode()


def test_wake_notes_split_and_deduplicate() -> None:
    ids = [str(uuid.uuid4()) for _ in range(MAX_WAKE_IDS * 2 + 5)]
    notes = wake_notes(ids + ids[:10])
    assert [len(n.ref.split(",")) for n in notes] == [MAX_WAKE_IDS, MAX_WAKE_IDS, 5]
    assert [i for n in notes for i in n.ref.split(",")] == ids
    assert all(len(n.encode().encode()) <= MAX_NOTE_BYTES for n in notes)
    assert wake_notes([]) == []


KEY = b"k" * 32
CHANNEL = str(uuid.uuid4())
SERVER = str(uuid.uuid4())


def test_a_hop_token_names_its_channel_and_server() -> None:
    token = hop_token(KEY, CHANNEL, SERVER, now=1000.0)
    assert verify_hop(KEY, CHANNEL, token, now=1000.0) == HopClaim(CHANNEL, SERVER)
    assert verify_hop(KEY, CHANNEL, token, now=1000.0 + TOKEN_TTL) == HopClaim(CHANNEL, SERVER)


@pytest.mark.parametrize(
    "case",
    ["other key", "other channel", "expired", "far future", "forged server", "garbage", "none"],
)
def test_hop_tokens_refused(case: str) -> None:
    token = hop_token(KEY, CHANNEL, SERVER, now=1000.0)
    key, channel, now = KEY, CHANNEL, 1000.0
    if case == "other key":
        key = b"x" * 32
    elif case == "other channel":
        channel = str(uuid.uuid4())
    elif case == "expired":
        now = 1000.0 + TOKEN_TTL + 1
    elif case == "far future":
        token = hop_token(KEY, CHANNEL, SERVER, now=5000.0)
    elif case == "forged server":
        token = str(uuid.uuid4()) + token[len(SERVER) :]
    elif case == "garbage":
        token = "a.b.c"
    else:
        token = ""
    assert verify_hop(key, channel, token or None, now=now) is None
