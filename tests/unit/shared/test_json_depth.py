"""Issue 14 finding 7: deeply nested JSON is ``malformed`` at every decoder, never a
``RecursionError`` (which dropped the link). Pure: every parser of network JSON."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fleetgate.agent.sudo.request import BadRequest, parse_request
from fleetgate.shared.errors import ProtocolViolation, TransferError
from fleetgate.shared.files.framing import decode_text
from fleetgate.shared.jsontext import MAX_JSON_DEPTH, JSONDepthError, loads
from fleetgate.shared.protocol import decode_agent_message, decode_server_message, error_ref
from fleetgate.shared.protocol.tunnel import decode_tunnel_control
from fleetgate.shared.protocol.websh import decode_agent_frame, decode_client_frame


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def in_field(depth: int) -> str:
    """A valid-looking message with the nesting inside one of its fields."""
    return '{"type": "ping", "nonce": ' + nested(depth) + "}"


# Deep enough to overflow the interpreter's stack in json.loads, and still small.
DEEP = [nested(100_000), in_field(100_000), '{"a":' * 50_000 + "1" + "}" * 50_000]


@pytest.mark.parametrize("frame", DEEP, ids=["array", "in a field", "objects"])
@pytest.mark.parametrize(
    "decode",
    [decode_agent_message, decode_server_message],
    ids=["from the agent", "from the control plane"],
)
def test_backhaul_decoders_call_deep_frames_malformed(
    decode: Callable[[str], object], frame: str
) -> None:
    with pytest.raises(ProtocolViolation) as info:
        decode(frame)
    assert info.value.code == "malformed"
    assert f"deeper than {MAX_JSON_DEPTH}" in info.value.message
    assert error_ref(frame) is None


@pytest.mark.parametrize("frame", DEEP, ids=["array", "in a field", "objects"])
@pytest.mark.parametrize(
    "decode",
    [decode_client_frame, decode_agent_frame, decode_tunnel_control],
    ids=["websh client", "websh agent", "tunnel"],
)
def test_channel_control_decoders_call_deep_frames_malformed(
    decode: Callable[[str], object], frame: str
) -> None:
    # Control frames are small: the deep frame must be refused, as too large or malformed.
    short = frame[:1500] + frame[-1500:]
    with pytest.raises(ProtocolViolation) as info:
        decode(short)
    assert info.value.code == "malformed"


def test_file_transfer_control_frames_call_deep_frames_malformed() -> None:
    for frame in DEEP:
        with pytest.raises(TransferError) as info:
            decode_text(frame.encode())
        assert info.value.code == "malformed"


def test_sudo_requests_call_deep_json_bad() -> None:
    with pytest.raises(BadRequest):
        parse_request(in_field(100_000).encode(), caller_uid=1000, caller_user="alice")


def test_the_depth_limit_is_exact() -> None:
    assert loads(nested(MAX_JSON_DEPTH)) is not None
    with pytest.raises(JSONDepthError):
        loads(nested(MAX_JSON_DEPTH + 1))
    assert loads('{"a": {"b": [1, {"c": null}]}}') == {"a": {"b": [1, {"c": None}]}}


@pytest.mark.parametrize("text", ["", "[", '{"a":}', "1 2", "\ud800", b"\xff\xfe"])
def test_other_bad_json_is_a_value_error(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        loads(text)
