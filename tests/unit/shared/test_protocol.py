"""The wire protocol: models and codec, without an event loop."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, strategies as st

from fleetgate.shared.errors import ProtocolViolation
from fleetgate.shared.protocol import (
    CommandFinished,
    CommandOutput,
    CommandRun,
    Confirm,
    Hello,
    Ping,
    decode_agent_message,
    decode_server_message,
    encode,
    error_ref,
)


def test_command_run_round_trips() -> None:
    """A command survives encode/decode unchanged, defaults included."""
    msg = CommandRun(command_id=uuid.uuid4(), line="uname -a", username="deploy", env={"A": "1"})
    assert decode_server_message(encode(msg)) == msg


def test_finished_round_trips_with_aware_timestamps() -> None:
    """Timestamps keep their UTC offset across the wire."""
    now = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    msg = CommandFinished(
        rid=7,
        command_id=uuid.uuid4(),
        handled_at=now,
        elapsed_time=0.5,
        exit_code=0,
        success=True,
        result="ok\n",
    )
    decoded = decode_agent_message(encode(msg))
    assert decoded == msg
    assert isinstance(decoded, CommandFinished)
    assert decoded.handled_at.utcoffset() is not None


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "malformed"),
        ("[1, 2]", "malformed"),
        ('"text"', "malformed"),
        ('{"type": "no.such.type"}', "unknown_type"),
        ('{"nonce": 1}', "unknown_type"),
        ('{"type": "command.run", "command_id": "nope", "line": "x"}', "invalid"),
        (
            json.dumps({"type": "command.run", "command_id": str(uuid.uuid4()), "line": ""}),
            "invalid",
        ),
        ('{"type": "confirm", "rids": [1], "extra": true}', "invalid"),
        (b"\xff\xfe", "malformed"),
    ],
)
def test_bad_server_frames_raise_protocol_violation(frame: str | bytes, code: str) -> None:
    """Every bad frame becomes one ProtocolViolation with a stable code."""
    with pytest.raises(ProtocolViolation) as info:
        decode_server_message(frame)
    assert info.value.code == code


def test_oversized_frame_is_refused_before_parsing() -> None:
    """The size limit is checked on the raw frame, so a huge one is never parsed."""
    frame = encode(Confirm(rids=list(range(1000))))
    with pytest.raises(ProtocolViolation) as info:
        decode_server_message(frame, max_bytes=len(frame) - 1)
    assert info.value.code == "too_large"
    assert decode_server_message(frame, max_bytes=len(frame)) == Confirm(rids=list(range(1000)))


@pytest.mark.parametrize(
    ("env", "fragment"),
    [({"A=B": "x"}, "not valid"), ({"1A": "x"}, "not valid"), ({"A": "x\0y"}, "NUL")],
)
def test_command_env_must_be_exportable(env: dict[str, str], fragment: str) -> None:
    """Variable names that execve cannot carry are refused at decode time."""
    frame = json.dumps(
        {"type": "command.run", "command_id": str(uuid.uuid4()), "line": "true", "env": env}
    )
    with pytest.raises(ProtocolViolation, match=fragment):
        decode_server_message(frame)


@pytest.mark.parametrize("username", ["-rf", "a b", "a/b", "a:b", "", "x" * 65])
def test_usernames_that_could_be_options_or_paths_are_refused(username: str) -> None:
    """A user name is a name: no leading dash, slash, colon or space."""
    frame = json.dumps(
        {
            "type": "command.run",
            "command_id": str(uuid.uuid4()),
            "line": "true",
            "username": username,
        }
    )
    with pytest.raises(ProtocolViolation):
        decode_server_message(frame)


def test_agent_and_server_unions_are_distinct() -> None:
    """A hello is an agent message; the control plane's decoder refuses it."""
    hello = encode(Hello(agent_version="1", hostname="h"))
    assert isinstance(decode_agent_message(hello), Hello)
    with pytest.raises(ProtocolViolation):
        decode_server_message(hello)


def test_error_ref_names_the_refused_frame() -> None:
    """The error reply points at the rid, command id or nonce when it can."""
    cid = uuid.uuid4()
    assert error_ref(json.dumps({"rid": 5})) == "5"
    assert error_ref(json.dumps({"command_id": str(cid)})) == str(cid)
    assert error_ref(json.dumps({"nonce": 3})) == "3"
    assert error_ref("nope") is None
    assert error_ref("[1]") is None
    assert error_ref(json.dumps({"rid": True})) is None


# The structured fuzz of the decoders is tests/unit/shared/test_fuzz_protocol.py.


@given(st.integers(min_value=0, max_value=2**31), st.text(max_size=100))
def test_output_chunks_round_trip_any_text(seq: int, data: str) -> None:
    """Output text of any content, control characters included, survives the codec."""
    msg = CommandOutput(rid=1, command_id=uuid.uuid4(), seq=seq, data=data)
    assert decode_agent_message(encode(msg)) == msg


def test_ping_defaults() -> None:
    """A ping carries only its nonce."""
    assert json.loads(encode(Ping(nonce=3))) == {"type": "ping", "nonce": 3}
