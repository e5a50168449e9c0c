"""Channels: the websockets that carry terminals, file transfers and tunnel streams.

A channel is one websocket from the client to the control plane and one from the agent
to the control plane, relayed frame by frame. The backhaul only carries the small
messages that open and close a channel (:class:`ChannelOpen`, :class:`ChannelClose`), so
bulk data never waits behind commands or delays their reports.

On a channel websocket, binary frames are payload bytes and text frames are one JSON
control object of the channel's kind (``fleetgate.shared.protocol.websh``, ``files``, ``tunnel``).
The control plane relays both without parsing them. :data:`CLOSE_CODES` lists the close
codes every side uses.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field

from fleetgate.shared.protocol.base import Message, Username
from fleetgate.shared.protocol.files import SHA256_PATTERN, TRANSFER_ID_PATTERN
from fleetgate.shared.protocol.grants import Grant


__all__ = [
    "CHANNEL_SCOPES",
    "CLOSE_AGENT_TIMEOUT",
    "CLOSE_BAD_REQUEST",
    "CLOSE_CODES",
    "CLOSE_INTERNAL",
    "CLOSE_NORMAL",
    "CLOSE_NOT_CONNECTED",
    "CLOSE_REFUSED",
    "CLOSE_UNKNOWN",
    "REVOCATION_CODES",
    "ChannelAccepted",
    "ChannelClose",
    "ChannelKind",
    "ChannelOpen",
    "ChannelSpec",
    "FilesSpec",
    "SshSpec",
    "TerminalEnd",
    "TunnelSpec",
    "WebshSpec",
    "grant_subjects",
    "refusal_reason",
]

ChannelKind = Literal["websh", "files", "tunnel", "ssh"]

CHANNEL_SCOPES: dict[str, str] = {"websh": "websh", "files": "webftp", "tunnel": "tunnel"}
"""The work-session scope each kind of channel needs (the seed calls file transfer webftp).

An ``ssh`` channel needs any one of ``fleetgate.shared.protocol.ssh.SSH_CHANNEL_SCOPES``;
each SSH request inside it is checked against its own scope (``SSH_SCOPES``)."""

CLOSE_NORMAL = 1000
CLOSE_INTERNAL = 1011
CLOSE_BAD_REQUEST = 4400
CLOSE_REFUSED = 4403
CLOSE_UNKNOWN = 4404
CLOSE_AGENT_TIMEOUT = 4408
CLOSE_NOT_CONNECTED = 4503

CLOSE_CODES: dict[int, str] = {
    CLOSE_NORMAL: "the channel ended normally",
    CLOSE_INTERNAL: "internal error",
    CLOSE_BAD_REQUEST: "the request is not valid",
    CLOSE_REFUSED: "refused by policy or the work-session gate (reason: JSON code and detail)",
    CLOSE_UNKNOWN: "no such channel",
    CLOSE_AGENT_TIMEOUT: "the agent did not attach in time",
    CLOSE_NOT_CONNECTED: "the server is not connected",
}


REVOCATION_CODES: dict[str, str] = {
    "token_revoked": "the token that opened the channel was deleted",
    "user_disabled": "the user who opened the channel was disabled",
    "work_session_revoked": "the channel's work session was revoked",
    "work_session_completed": "the channel's work session was completed",
    "work_session_expired": "the channel's work session expired",
}
"""The ``code`` of a channel ended by revocation (close code 4403, reason
``{"code", "detail"}``): the client must not retry with the same credentials or session."""


def refusal_reason(code: str, detail: str) -> str:
    """The close reason of a refused channel: ``{"code", "detail"}`` as compact JSON,
    the detail shortened to fit a close frame's 123 bytes."""
    reason = json.dumps({"code": code, "detail": detail}, separators=(",", ":"))
    while len(reason.encode()) > 123 and detail:
        detail = detail[: len(detail) // 2]
        reason = json.dumps({"code": code, "detail": detail + "..."}, separators=(",", ":"))
    return reason


class WebshSpec(Message):
    """A terminal: a login shell on a PTY as ``username``.

    ``terminal_id`` names the terminal across reattachments; every attachment is a new
    channel. ``attach`` is true when the terminal should already exist on the agent.
    """

    kind: Literal["websh"] = "websh"
    terminal_id: UUID
    username: Username = "root"
    groupname: Username | None = None
    rows: int = Field(default=24, ge=1, le=1000)
    cols: int = Field(default=80, ge=1, le=1000)
    shell: str | None = Field(default=None, max_length=4096)
    """A shell listed in the server's /etc/shells; default: the user's passwd shell."""
    attach: bool = False
    term: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._+-]{1,64}$")
    """The client's ``TERM``; default: the agent's ``websh.default_term``."""


class FilesSpec(Message):
    """One file transfer performed on the server as ``username`` (``docs/protocol.md``,
    "File transfer"); the channel's frames are ``fleetgate.shared.protocol.files``'s.

    ``upload`` writes ``path`` (an existing directory receives ``name``); ``download``
    reads it from ``offset``. ``recursive`` moves a directory as a tar stream. A second
    upload with the same ``transfer_id`` resumes the first. ``expect_sha256`` makes an
    upload replace the file only if it still has that digest (``agentctl edit``).
    """

    kind: Literal["files"] = "files"
    username: Username
    groupname: Username | None = None
    op: Literal["upload", "download"]
    path: str = Field(min_length=1, max_length=4096)
    name: str | None = Field(default=None, min_length=1, max_length=255)
    recursive: bool = False
    overwrite: bool = False
    transfer_id: str = Field(pattern=TRANSFER_ID_PATTERN)
    offset: int = Field(default=0, ge=0)
    size: int | None = Field(default=None, ge=0)
    expect_sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)


class TunnelSpec(Message):
    """One TCP stream of tunnel ``tunnel_id`` to ``127.0.0.1:port`` on the server.

    ``host`` may name another loopback address (``::1``); the agent refuses anything that
    is not loopback (``tunnel_target_not_allowed``): a tunnel never leaves the server.
    """

    kind: Literal["tunnel"] = "tunnel"
    tunnel_id: UUID
    port: int = Field(ge=1, le=65535)
    host: str | None = Field(default=None, max_length=255)
    probe: bool = False
    """Check only (grant, policy, limits), then close: no connection to the target."""


class SshSpec(Message):
    """One SSH connection, terminated by the agent's in-process SSH server.

    The channel's binary frames are the SSH byte stream, framed like a tunnel stream
    (``{"type": "eof"}``, ``{"type": "error"}``). ``username`` is the login the client
    asked for: the user certificate must name it as principal.
    """

    kind: Literal["ssh"] = "ssh"
    username: Username


ChannelSpec = Annotated[WebshSpec | FilesSpec | TunnelSpec | SshSpec, Field(discriminator="kind")]


class ChannelOpen(Message):
    """Control plane to agent: dial ``/ws/agent/channels/<channel_id>/`` and serve ``spec``.

    The agent refuses with an ``error`` message whose ``ref`` is the channel id, carrying
    a ``work_session_*`` code for grant refusals or the kind's own code.
    """

    type: Literal["channel.open"] = "channel.open"
    channel_id: UUID
    spec: ChannelSpec
    grant: Grant | None = None
    """Signed permission, as for commands; the claims' ``command_id`` is the channel id,
    or for a tunnel stream its tunnel's id (:func:`grant_subjects`)."""
    quiet: bool = False
    """Only on a pooled websocket whose agent asked for it (``/ws/agent/pool/?quiet=1``),
    for a channel whose client frames follow the open without waiting for the answer (a
    pipelined tunnel stream): the agent sends no ``channel.accepted``. Its refusal is
    still an ``error`` whose ``ref`` is the channel id; any other frame (or the close)
    is already the channel's own, and says it was accepted."""


def grant_subjects(message: ChannelOpen) -> tuple[UUID, ...]:
    """The ids the grant of ``message`` may name (its claims' ``command_id``): the channel's
    own, or for a tunnel stream also its tunnel's, so that one grant (signed once, verified
    once) serves every stream of a tunnel to the target its content binds. Each stream is
    still checked on its own: by the control plane (the tunnel open, its owner, the gate)
    and by the agent (the grant's time window, server, scope and content)."""
    spec = message.spec
    if isinstance(spec, TunnelSpec):
        return (message.channel_id, spec.tunnel_id)
    return (message.channel_id,)


class ChannelAccepted(Message):
    """Agent to control plane, on a pooled channel websocket (``/ws/agent/pool/``): the
    ``channel.open`` just received on it passed the agent's checks, and the websocket is
    that channel's from the next frame on. A refusal is an ``error`` whose ``ref`` is the
    channel id, as on the backhaul. Not sent for a ``quiet`` open (``ChannelOpen.quiet``).

    A pooled websocket is one the agent dials ahead of need while channels are in use; it
    carries nothing until the control plane sends it a ``channel.open`` (with its grant,
    checked exactly as one received on the backhaul), and serves one channel at a time
    (tunnel streams one after another when it was accepted for reuse: ``tunnel``).
    """

    type: Literal["channel.accepted"] = "channel.accepted"
    channel_id: UUID


class ChannelClose(Message):
    """Control plane to agent: end the channel now (its client left, its session ended)."""

    type: Literal["channel.close"] = "channel.close"
    channel_id: UUID
    reason: str = Field(default="", max_length=1024)


class TerminalEnd(Message):
    """Control plane to agent: end terminal ``terminal_id`` now, attached or detached.

    Sent when what opened the terminal was revoked (its token, its user, its work
    session) or it was closed through the API: the shell is ended (SIGHUP, then SIGKILL)
    instead of waiting for the detach grace. An unknown terminal is ignored.
    """

    type: Literal["terminal.end"] = "terminal.end"
    terminal_id: UUID
    reason: str = Field(default="closed", max_length=1024)
