"""Encoding and decoding of backhaul frames, with size limits.

Nothing else in the agent or the control plane parses backhaul JSON: every frame goes
through :func:`decode_agent_message` or :func:`decode_server_message`, which raise only
:class:`~fleetgate.shared.errors.ProtocolViolation`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from fleetgate.shared.errors import ProtocolViolation
from fleetgate.shared.jsontext import loads as json_loads
from fleetgate.shared.protocol.limits import DEFAULT_MAX_MESSAGE_BYTES
from fleetgate.shared.protocol.messages import AgentMessage, ServerMessage


__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "decode_agent_message",
    "decode_server_message",
    "encode",
    "error_ref",
]


_T = TypeVar("_T")

_agent_adapter: TypeAdapter[AgentMessage] = TypeAdapter(AgentMessage)
_server_adapter: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


def encode(message: BaseModel) -> str:
    """Serialize one message to the JSON text of a frame."""
    return message.model_dump_json()


def decode_agent_message(
    frame: str | bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> AgentMessage:
    """Parse a frame sent by an agent.

    Raises:
        ProtocolViolation: the frame is too large, not JSON, of an unknown type, or
            does not match its model.
    """
    return _decode(_agent_adapter, frame, max_bytes)


def decode_server_message(
    frame: str | bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> ServerMessage:
    """Parse a frame sent by the control plane. Raises like :func:`decode_agent_message`."""
    return _decode(_server_adapter, frame, max_bytes)


def error_ref(frame: str | bytes) -> str | None:
    """Best-effort identification of a refused frame (its rid or command id), for errors."""
    try:
        obj = json_loads(frame)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    for key in ("rid", "command_id", "nonce"):
        value = obj.get(key)
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            return str(value)[:128]
    return None


def _decode(adapter: TypeAdapter[_T], frame: str | bytes, max_bytes: int) -> _T:
    size = len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolViolation("too_large", f"message of {size} bytes exceeds {max_bytes}")
    try:
        obj: Any = json_loads(frame)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolViolation("malformed", f"not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolViolation("malformed", "a message must be a JSON object")
    try:
        return adapter.validate_python(obj)
    except ValidationError as exc:
        code = "invalid"
        if any(err["type"] in {"union_tag_invalid", "union_tag_not_found"} for err in exc.errors()):
            code = "unknown_type"
        raise ProtocolViolation(code, _summarize(exc)) from exc


def _summarize(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
