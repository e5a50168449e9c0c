"""Wire messages of the backhaul, protocol version 1.

Every frame on the backhaul websocket is one JSON object (a text frame) with a ``type``
field that selects the model below. The agent sends :data:`AgentMessage`, the control
plane sends :data:`ServerMessage`. ``docs/protocol.md`` explains the exchange; the JSON
schema in ``docs/protocol.schema.json`` is generated from these models.

Reports (``command.*`` from the agent) carry a report id ``rid``: an integer the agent
assigns in increasing order. The control plane answers with ``confirm`` once a report is
stored; until then the agent keeps it and sends it again after a reconnect. Storing a
report is idempotent on the control plane, so a report sent twice is stored once.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, field_validator

from fleetgate.shared.protocol.base import Labels, Message as _Message, Username
from fleetgate.shared.protocol.channels import ChannelClose, ChannelOpen, TerminalEnd
from fleetgate.shared.protocol.grants import Grant
from fleetgate.shared.protocol.limits import MAX_ENV_VARS, MAX_LINE_CHARS, env_problem


__all__ = [
    "PROTOCOL_VERSION",
    "AgentMessage",
    "CommandAcked",
    "CommandDelivered",
    "CommandFinished",
    "CommandOutput",
    "CommandReport",
    "CommandRun",
    "Confirm",
    "ErrorMessage",
    "Hello",
    "Ping",
    "Pong",
    "Requester",
    "ServerMessage",
    "SshEvent",
    "SudoDecided",
    "Welcome",
    "WorkSessionEnded",
]

PROTOCOL_VERSION = 1
"""Bumped on any change an older peer could misread."""

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


# -- both directions ------------------------------------------------------------------


class Ping(_Message):
    """Application keepalive; the peer answers with :class:`Pong` carrying the same nonce."""

    type: Literal["ping"] = "ping"
    nonce: int


class Pong(_Message):
    """Answer to :class:`Ping`."""

    type: Literal["pong"] = "pong"
    nonce: int


class ErrorMessage(_Message):
    """A message from the peer was refused; the connection stays open.

    ``code`` is one of ``malformed``, ``too_large``, ``unknown_type``, ``invalid``,
    ``unsupported_version`` or ``internal``. ``ref`` names the refused message when it
    could be identified (its ``rid`` or ``command_id``).
    """

    type: Literal["error"] = "error"
    code: str = Field(max_length=64)
    message: str = Field(max_length=4096)
    ref: str | None = Field(default=None, max_length=128)


# -- agent -> control plane -----------------------------------------------------------


class Hello(_Message):
    """First message of the agent on every connection."""

    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    agent_version: str = Field(max_length=64)
    hostname: str = Field(max_length=255)
    running: list[UUID] = Field(default_factory=list, max_length=10_000)
    """Commands this agent is executing right now (so they are not redelivered)."""
    max_message_bytes: int | None = Field(default=None, ge=1)
    """The largest frame this agent accepts (its ``limits.max_message_bytes``): the control
    plane never sends it a larger ``command.run``, it fails that command instead.
    ``None`` (an older agent): the control plane assumes its own limit."""
    ssh_host_key: str | None = Field(default=None, max_length=1024)
    """The agent's SSH host public key (OpenSSH one-line form), for ``ssh`` channels."""
    features: list[Annotated[str, Field(max_length=32)]] = Field(
        default_factory=list, max_length=16
    )
    """Optional features the server's owner turned on in this agent's configuration
    (``tunnel``); work sessions may include those scopes only for servers that offer
    them. An agent that predates the field offers none."""
    labels: Labels = Field(default_factory=dict)
    """The server's labels from the agent's configuration (``key=value``, see
    ``fleetgate.shared.labels``); they replace the ones of the previous ``hello``."""
    tunnel_grants: bool = False
    """This agent takes one grant for all the streams of a tunnel (its claims name the
    tunnel: ``channels.grant_subjects``). ``False`` (an older agent): each stream's grant
    names its channel."""


class CommandDelivered(_Message):
    """The command reached the agent and was accepted for execution."""

    type: Literal["command.delivered"] = "command.delivered"
    rid: int = Field(ge=0)
    command_id: UUID
    delivered_at: datetime


class CommandAcked(_Message):
    """The command's process started (or was about to, for a command that cannot start)."""

    type: Literal["command.acked"] = "command.acked"
    rid: int = Field(ge=0)
    command_id: UUID
    acked_at: datetime


class CommandOutput(_Message):
    """A chunk of the command's merged stdout and stderr, in order by ``seq`` from 0."""

    type: Literal["command.output"] = "command.output"
    rid: int = Field(ge=0)
    command_id: UUID
    seq: int = Field(ge=0)
    data: str


class CommandFinished(_Message):
    """The command ended; this is its one final result.

    ``result`` is the output capped to the configured size, keeping head and tail, with
    ``truncated`` set when bytes were dropped from the middle. ``error`` explains a
    command that could not start or did not end normally (timeout, interrupted).
    """

    type: Literal["command.finished"] = "command.finished"
    rid: int = Field(ge=0)
    command_id: UUID
    handled_at: datetime
    elapsed_time: float = Field(ge=0)
    exit_code: int
    success: bool
    result: str
    truncated: bool = False
    output_bytes: int = Field(default=0, ge=0)
    error_phase: str | None = Field(default=None, max_length=64)
    message: str | None = Field(default=None, max_length=4096)
    code: str | None = Field(default=None, max_length=64)
    """The stable refusal code of a command the agent refused (``error_phase``
    ``denied``), e.g. ``sudo_pattern_not_allowed``."""


class SudoDecided(_Message):
    """The agent allowed or refused a ``sudo`` inside a session of a work session.

    For the session's timeline; reported through the outbox like command reports, so none
    is lost. ``decision_id`` makes storing it idempotent. ``session`` names the process
    session (``command <id>`` or ``websh <id>``); ``command_id`` is set for a command.
    """

    type: Literal["sudo.decision"] = "sudo.decision"
    rid: int = Field(ge=0)
    decision_id: UUID
    work_session: str = Field(max_length=128)
    session: str = Field(max_length=256)
    command_id: UUID | None = None
    user: str = Field(max_length=64)
    command: str = Field(max_length=4096)
    argv: list[Annotated[str, Field(max_length=4096)]] = Field(max_length=256)
    allowed: bool
    code: str = Field(max_length=64)
    message: str = Field(max_length=4096)
    at: datetime


class SshEvent(_Message):
    """Something a user did through an SSH connection the agent terminates.

    For the work session's timeline (and the audit log), reported through the outbox like
    command reports. ``op`` is ``shell`` (a PTY shell, recorded as terminal
    ``terminal_id``), ``exec`` (a command; ``exit_code`` once it ended), ``sftp`` (one file
    transfer: ``path``, ``bytes_read``, ``bytes_written``), ``forward`` (an ``ssh -L``
    stream; an ``ssh -R`` listener or connection) or ``refused`` (``code`` and ``detail``
    say why). ``event_id`` makes storing it idempotent.
    """

    type: Literal["ssh.event"] = "ssh.event"
    rid: int = Field(ge=0)
    event_id: UUID
    channel_id: UUID
    work_session: str | None = Field(default=None, max_length=128)
    op: Literal["shell", "exec", "sftp", "forward", "refused"]
    user: str = Field(max_length=64)
    detail: str = Field(default="", max_length=4096)
    code: str | None = Field(default=None, max_length=64)
    exit_code: int | None = None
    elapsed: float | None = Field(default=None, ge=0)
    """Seconds an exec ran."""
    terminal_id: UUID | None = None
    path: str | None = Field(default=None, max_length=4096)
    bytes_read: int | None = Field(default=None, ge=0)
    bytes_written: int | None = Field(default=None, ge=0)
    at: datetime


CommandReport = (
    CommandDelivered | CommandAcked | CommandOutput | CommandFinished | SudoDecided | SshEvent
)
"""Reports the control plane confirms and the agent keeps until confirmed."""

AgentMessage = Annotated[
    Hello
    | CommandDelivered
    | CommandAcked
    | CommandOutput
    | CommandFinished
    | SudoDecided
    | SshEvent
    | Ping
    | Pong
    | ErrorMessage,
    Field(discriminator="type"),
]


# -- control plane -> agent -----------------------------------------------------------


class Welcome(_Message):
    """Answer to :class:`Hello`: the control plane accepted this connection."""

    type: Literal["welcome"] = "welcome"
    protocol: int = PROTOCOL_VERSION
    server_id: UUID
    server_name: str = Field(max_length=255)


class Requester(_Message):
    """Who asked for a command: the token, and its user (``None`` for a service token).

    For the agent's audit log only: what the command may do is decided by its grant.
    """

    token_id: str = Field(min_length=1, max_length=64)
    user_id: int | None = None
    username: str | None = Field(default=None, max_length=150)


class CommandRun(_Message):
    """Run ``line`` as ``username``:``groupname`` with ``env`` added to a clean environment.

    ``shell`` is ``system`` (``/bin/sh -c line``). ``timeout`` is in seconds; ``None``
    means the agent's configured default.
    """

    type: Literal["command.run"] = "command.run"
    command_id: UUID
    shell: Literal["system"] = "system"
    line: str = Field(min_length=1, max_length=MAX_LINE_CHARS)
    username: Username = "root"
    groupname: Username | None = None
    env: dict[str, str] = Field(default_factory=dict, max_length=MAX_ENV_VARS)
    timeout: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    grant: Grant | None = None
    """Signed permission for this command (``fleetgate.shared.protocol.grants``); optional on the
    wire, required by an agent that pins the control plane's key."""
    sudo: bool = False
    """Elevation on behalf of a work-session user: runs as root only if ``line`` (plain
    words, no shell syntax) matches a sudo pattern of the grant, which needs the
    ``sudo`` scope (``docs/sudo.md``)."""
    requested_by: Requester | None = None
    """Who asked (audit only)."""
    work_session: str | None = Field(default=None, max_length=128)
    """The work session the control plane gated the command with (audit only; the
    grant's own ``work_session`` is what the agent enforces)."""

    @field_validator("env")
    @classmethod
    def _env_is_exportable(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            if not _ENV_KEY.fullmatch(key):
                raise ValueError(f"environment variable name {key!r} is not valid")
            if "\0" in value:
                raise ValueError(f"environment variable {key} contains a NUL byte")
        problem = env_problem(env)
        if problem is not None:
            raise ValueError(problem)
        return env

    @field_validator("line")
    @classmethod
    def _line_has_no_nul(cls, line: str) -> str:
        if "\0" in line:
            raise ValueError("the command line contains a NUL byte")
        return line


class Confirm(_Message):
    """The control plane stored these reports; the agent may forget them."""

    type: Literal["confirm"] = "confirm"
    rids: list[int] = Field(max_length=100_000)


class WorkSessionEnded(_Message):
    """A work session ended (revoked, completed, expired): revoke what it allows at once
    (sudo in its sessions is refused from now on). Not confirmed: the agent also
    enforces the session's ``expires_at`` with its own clock."""

    type: Literal["work_session.ended"] = "work_session.ended"
    work_session: str = Field(min_length=1, max_length=128)
    status: str = Field(default="ended", max_length=32)


ServerMessage = Annotated[
    Welcome
    | CommandRun
    | ChannelOpen
    | ChannelClose
    | TerminalEnd
    | Confirm
    | WorkSessionEnded
    | Ping
    | Pong
    | ErrorMessage,
    Field(discriminator="type"),
]
