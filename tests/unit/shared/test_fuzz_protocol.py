"""Structured fuzz of every parser of peer-sent JSON on the wire (issue 14).

Frames are drawn from the models' own JSON schemas, then mutated field by field (wrong
types, huge values, deleted and unknown fields, unknown types, deep nesting) and
sometimes damaged as text (``tests.support.fuzz``). For each, the decoder either returns
a model that round-trips, or raises its one documented error with a stable code and a
message that fits the error reply the reader builds from it: so a reader never crashes
and the link survives (the integration tests check live links).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from pydantic import TypeAdapter, ValidationError

from fleetgate.shared.errors import ProtocolViolation, TransferError
from fleetgate.shared.files.framing import decode_text
from fleetgate.shared.protocol import (
    AgentMessage,
    ErrorMessage,
    ServerMessage,
    decode_agent_message,
    decode_server_message,
    encode,
    error_ref,
)
from fleetgate.shared.protocol.files import FileError, FileFrame, decode_file_frame
from fleetgate.shared.protocol.tunnel import (
    TunnelControl,
    decode_tunnel_control,
    tunnel_error_frame,
)
from fleetgate.shared.protocol.websh import (
    AgentFrame,
    ClientFrame,
    WebshError,
    decode_agent_frame,
    decode_client_frame,
)
from tests.support.fuzz import count, frames


CODES = {"malformed", "too_large", "unknown_type", "invalid"}

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

E = TypeVar("E", bound=Exception)


def outcome(call: Callable[[Any], Any], arg: Any, error: type[E]) -> tuple[Any, E | None]:
    """``(call(arg), None)``, or ``(None, the error)`` when it raised ``error``."""
    try:
        return call(arg), None
    except error as exc:
        return None, exc


def schema_of(kind: Any) -> dict[str, Any]:
    return TypeAdapter(kind).json_schema()


def _backhaul(frame: str | bytes, decode: Callable[[str | bytes], Any]) -> None:
    message, refused = outcome(decode, frame, ProtocolViolation)
    if refused is None:
        assert decode(encode(message)) == message
        return
    assert refused.code in CODES
    assert refused.message
    # What both readers answer (the agent's without trimming): a valid message.
    reply = ErrorMessage(code=refused.code, message=refused.message, ref=error_ref(frame))
    assert decode_server_message(encode(reply)) == reply


@settings(FUZZ, max_examples=700)
@given(frames(schema_of(AgentMessage)))
def test_fuzz_backhaul_frames_from_the_agent(batch: list[str | bytes]) -> None:
    for frame in batch:
        count("backhaul, agent to control plane")
        _backhaul(frame, decode_agent_message)


@settings(FUZZ, max_examples=700)
@given(frames(schema_of(ServerMessage)))
def test_fuzz_backhaul_frames_from_the_control_plane(batch: list[str | bytes]) -> None:
    for frame in batch:
        count("backhaul, control plane to agent")
        _backhaul(frame, decode_server_message)


def _text(frame: str | bytes) -> str:
    return frame if isinstance(frame, str) else frame.decode("utf-8", "replace")


@settings(FUZZ, max_examples=250)
@given(frames(schema_of(ClientFrame)))
def test_fuzz_websh_control_frames_from_the_client(batch: list[str | bytes]) -> None:
    for frame in batch:
        count("websh control, client to agent")
        _, refused = outcome(decode_client_frame, _text(frame), ProtocolViolation)
        if refused is not None:
            assert refused.code in CODES
            WebshError(code=refused.code, message=refused.message)  # the terminal's answer


@settings(FUZZ, max_examples=125)
@given(frames(schema_of(AgentFrame)))
def test_fuzz_websh_control_frames_from_the_agent(batch: list[str | bytes]) -> None:
    for frame in batch:
        count("websh control, agent to client")
        _, refused = outcome(decode_agent_frame, _text(frame), ProtocolViolation)
        assert refused is None or refused.code in CODES


@settings(FUZZ, max_examples=250)
@given(frames(schema_of(TunnelControl)))
def test_fuzz_tunnel_control_frames(batch: list[str | bytes]) -> None:
    for frame in batch:
        count("tunnel control")
        _, refused = outcome(decode_tunnel_control, _text(frame), ProtocolViolation)
        if refused is not None:
            assert refused.code in CODES
            assert decode_tunnel_control(tunnel_error_frame("tunnel_protocol", refused.message))


@settings(FUZZ, max_examples=250)
@given(frames(schema_of(FileFrame)))
def test_fuzz_file_transfer_control_frames(batch: list[str | bytes]) -> None:
    for frame in batch:
        count("files control")
        # The agent's relay, on the client's frames: a ValidationError is an error frame.
        _, invalid = outcome(decode_file_frame, frame, ValidationError)
        if invalid is not None:
            FileError(code="malformed", message=f"bad control frame: {invalid}"[:500])
        data = frame if isinstance(frame, bytes) else frame.encode("utf-8", "surrogatepass")
        _, refused = outcome(decode_text, data, TransferError)  # the worker's parser
        if refused is not None:
            assert refused.code == "malformed"
            FileError(code=refused.code, message=refused.message)
