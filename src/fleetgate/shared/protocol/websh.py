"""Control frames of a websh channel (text frames); terminal bytes travel as binary frames.

A websh channel carries raw terminal bytes both ways as binary websocket frames: what the
client sends is written to the PTY, what the shell prints comes back. Text frames carry
one JSON object each, one of the models below. The control plane relays both unchanged.

Client to agent: :class:`Resize`, :class:`Close`.
Agent to client: :class:`Ready` (first frame of every attach), :class:`Exit` (the shell
ended; the agent then closes the websocket with 1000), :class:`WebshError` (a control frame
was refused; the terminal stays open).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from fleetgate.shared.errors import ProtocolViolation
from fleetgate.shared.jsontext import loads as json_loads


__all__ = [
    "MAX_CONTROL_BYTES",
    "MAX_DIMENSION",
    "ClientFrame",
    "Close",
    "Exit",
    "Ready",
    "Resize",
    "WebshError",
    "decode_agent_frame",
    "decode_client_frame",
]

MAX_CONTROL_BYTES = 4096
"""Largest text frame accepted on a websh channel; control frames are tiny."""

MAX_DIMENSION = 4096
"""Largest number of rows or columns (the kernel's winsize holds 16 bits)."""

Dimension = Annotated[int, Field(ge=1, le=MAX_DIMENSION)]


class _Frame(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Resize(_Frame):
    """The client's window changed size; the agent sets the PTY's size (SIGWINCH follows)."""

    type: Literal["resize"] = "resize"
    rows: Dimension
    cols: Dimension


class Close(_Frame):
    """End the terminal now (the shell's process group gets SIGHUP, then SIGKILL).

    Closing the websocket without this frame only detaches: the shell is kept for the
    agent's ``websh.detach_grace`` seconds so that the client can reattach.
    """

    type: Literal["close"] = "close"


class Ready(_Frame):
    """First frame the agent sends on every attach.

    ``reattached`` is true when an existing shell was attached again; the bytes that follow
    start with the tail of what the shell printed while nobody was attached (at most
    ``websh`` ring size).
    """

    type: Literal["ready"] = "ready"
    terminal_id: UUID
    reattached: bool = False
    rows: Dimension
    cols: Dimension


class Exit(_Frame):
    """The shell ended with ``code`` (``128 + n`` when killed by signal ``n``).

    ``reason`` says why the terminal ended: ``exited`` (the shell exited), ``closed`` (the
    client or the control plane closed it), ``recording_full`` (the spool is full and the
    policy is ``refuse``), ``shutdown`` (the agent stops).
    """

    type: Literal["exit"] = "exit"
    code: int
    reason: str = Field(default="exited", max_length=64)


class WebshError(_Frame):
    """A control frame from the client was refused; nothing else changes."""

    type: Literal["error"] = "error"
    code: str = Field(max_length=64)
    message: str = Field(max_length=1024)


ClientFrame = Annotated[Resize | Close, Field(discriminator="type")]
AgentFrame = Annotated[Ready | Exit | WebshError, Field(discriminator="type")]

_client_adapter: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
_agent_adapter: TypeAdapter[AgentFrame] = TypeAdapter(AgentFrame)


def decode_client_frame(text: str) -> Resize | Close:
    """Parse a text frame from the client.

    Raises:
        ProtocolViolation: too large, not a JSON object, unknown ``type`` or invalid fields.
    """
    frame: Resize | Close = _decode(_client_adapter, text)
    return frame


def decode_agent_frame(text: str) -> Ready | Exit | WebshError:
    """Parse a text frame from the agent (used by clients). Raises like the client side."""
    frame: Ready | Exit | WebshError = _decode(_agent_adapter, text)
    return frame


def _decode(adapter: TypeAdapter[Any], text: str) -> Any:
    if len(text) > MAX_CONTROL_BYTES:
        raise ProtocolViolation("too_large", f"control frame exceeds {MAX_CONTROL_BYTES} bytes")
    try:
        obj = json_loads(text)
    except ValueError as exc:
        raise ProtocolViolation("malformed", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolViolation("malformed", "a control frame must be a JSON object")
    try:
        return adapter.validate_python(obj)
    except ValidationError as exc:
        errors = exc.errors()
        if any(e["type"] in {"union_tag_invalid", "union_tag_not_found"} for e in errors):
            raise ProtocolViolation(
                "unknown_type", f"unknown control frame {obj.get('type')!r}"
            ) from None
        first = errors[0]
        loc = ".".join(str(p) for p in first["loc"][1:]) or "frame"
        raise ProtocolViolation("invalid", f"{loc}: {first['msg']}") from None
