"""Control frames of a ``tunnel`` channel (one TCP connection), pure: no I/O.

On a tunnel channel a binary frame is payload bytes, in order, of any size up to the
link's frame limit; there are no per-frame acknowledgements (the websocket's own TCP
flow control is the backpressure). A text frame is one JSON control object:

- ``{"type": "eof"}``: the sender's TCP peer closed its write side; the receiver shuts
  down the write side of its own socket (half-close) and keeps sending its data.
- ``{"type": "error", "code": ..., "message": ...}``: the stream failed (connection
  refused, reset, protocol violation); the sender closes the channel right after.

The stream ends when both sides have sent ``eof`` (then either closes with 1000) or
when the channel closes first (the other side aborts its socket).

A websocket may carry one stream after another (:data:`REUSE_HEADER`): each link is
between an end (agentctl, the agent) and the control plane, and an end that asked for it
and got the header ends a clean stream with ``{"type": "end"}`` (:data:`END_FRAME`)
instead of closing: it sends it once its ``eof`` went out and the peer's came in (as the
last ``eof`` it stands for that ``eof`` too, which the control plane passes on), and from
then on the websocket carries its next stream (a client's next ``open``, the agent's next
``channel.open``), with every check of a new stream. The control plane passes ``end`` on
to no one, and keeps a websocket whose end said ``end`` whatever the other side does
afterwards. A stream that ends any other way closes its websockets, never used again.

A client may open a stream's websocket ahead of need with ``?defer=1``: the control
plane then authorizes and opens the stream only when the client's first frame,
``{"type": "open"}`` (:data:`OPEN_FRAME`), arrives (a refusal is a close 4403 whose
reason is ``{"code", "detail"}``), so a new connection skips the websocket handshake.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from fleetgate.shared.errors import ProtocolViolation
from fleetgate.shared.jsontext import loads as json_loads


__all__ = [
    "END_FRAME",
    "EOF_FRAME",
    "OPEN_FRAME",
    "REUSE_HEADER",
    "TunnelControl",
    "TunnelEnd",
    "TunnelEof",
    "TunnelError",
    "decode_tunnel_control",
    "tunnel_error_frame",
]


class _Frame(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TunnelEof(_Frame):
    """The sender's side of the TCP connection will send no more bytes."""

    type: Literal["eof"] = "eof"


class TunnelEnd(_Frame):
    """Sent to the control plane once both ``eof`` have passed (it stands for the
    sender's ``eof`` when that was not sent yet): the stream ended cleanly, and the
    websocket carries the next one (only one accepted with :data:`REUSE_HEADER`)."""

    type: Literal["end"] = "end"


class TunnelError(_Frame):
    """The stream failed; ``code`` is stable (``tunnel_*``), ``message`` is for people."""

    type: Literal["error"] = "error"
    code: str = Field(max_length=64)
    message: str = Field(max_length=4096)


TunnelControl = Annotated[TunnelEof | TunnelEnd | TunnelError, Field(discriminator="type")]
"""Any control frame of a tunnel channel."""

_ADAPTER: TypeAdapter[TunnelEof | TunnelEnd | TunnelError] = TypeAdapter(TunnelControl)

EOF_FRAME = TunnelEof().model_dump_json()
"""The encoded ``eof`` frame (constant, sent as text)."""

END_FRAME = TunnelEnd().model_dump_json()
"""The encoded ``end`` frame (constant, sent as text; the control plane matches it
exactly)."""

REUSE_HEADER = "x-fleetgate-stream-reuse"
"""Asked for with ``?reuse=1`` (agentctl's stream websockets, the agent's pooled ones);
the control plane accepts with this header (value ``1``) when it ends the streams of that
websocket with ``end`` frames. Without it, streams end by closing, as before."""

OPEN_FRAME = '{"type":"open"}'
"""The first frame of a deferred stream (client to control plane): open it now."""

_MAX_CONTROL_BYTES = 8192


def tunnel_error_frame(code: str, message: str) -> str:
    """The encoded ``error`` frame (the message is cut to the model's bound)."""
    return TunnelError(code=code[:64], message=message[:4096]).model_dump_json()


def decode_tunnel_control(text: str) -> TunnelEof | TunnelEnd | TunnelError:
    """Parse one text frame of a tunnel channel.

    Raises:
        ProtocolViolation: too large, not JSON, or not a known control frame.
    """
    if len(text) > _MAX_CONTROL_BYTES:
        raise ProtocolViolation("too_large", f"tunnel control frame of {len(text)} characters")
    try:
        obj = json_loads(text)
    except ValueError as exc:
        raise ProtocolViolation("malformed", f"bad tunnel control frame: {exc}") from None
    try:
        return _ADAPTER.validate_python(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(frame)"
        raise ProtocolViolation(
            "invalid", f"bad tunnel control frame: {where}: {err['msg']}"
        ) from None
