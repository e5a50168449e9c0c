"""What every SSH connection of the agent shares, and how a request is gated. Pure: no I/O.

Kept apart from asyncssh so the service and the tests import it without the SSH library.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from fleetgate.agent.config import AgentConfig
from fleetgate.agent.tunnel.policy import StreamBook, TunnelPolicy
from fleetgate.agent.websh.manager import TerminalManager
from fleetgate.shared.protocol.grants import GrantClaims
from fleetgate.shared.protocol.ssh import SSH_SCOPES


__all__ = ["Reporter", "SshContext", "SshRefusal", "scope_refusal"]

Reporter = Callable[[dict[str, Any]], Awaitable[None]]
"""Sends one ``ssh.event`` (its fields, without ``rid``) to the work session's timeline."""

_WHAT = {
    "shell": "an interactive shell",
    "exec": "running a command",
    "sftp": "file transfer (sftp, scp)",
    "forward": "port forwarding (ssh -L, -R)",
}


@dataclass(frozen=True, slots=True)
class SshRefusal:
    """A request the agent refuses; the client is told ``detail``."""

    code: str
    detail: str


@dataclass(frozen=True)
class SshContext:
    """The agent's SSH settings and the services SSH requests use."""

    config: AgentConfig
    server_id: UUID
    ca_key: str
    host_key_file: Path
    terminals: TerminalManager
    tunnels: TunnelPolicy
    streams: StreamBook
    """The agent's open tunnel streams, shared with the ``tunnel`` service: an SSH
    connection's ``-L`` / ``-R`` streams count against ``[tunnel] max_streams``, and
    against ``max_streams_per_tunnel`` as one tunnel."""
    setpriv: str | None
    report: Reporter | None = None


def scope_refusal(op: str, claims: GrantClaims | None) -> SshRefusal | None:
    """Whether the channel's grant allows SSH request ``op`` (``shell``, ``exec``, ``sftp``,
    ``forward``); ``None`` when it does. A token's channel (no work session) carries every
    SSH scope; without claims (unsigned development agent) everything is allowed."""
    if claims is None:
        return None
    scope = SSH_SCOPES[op]
    if scope in claims.scopes:
        return None
    return SshRefusal(
        "work_session_scope_not_allowed",
        f"{_WHAT[op]} needs the {scope!r} scope, which the work session does not have",
    )
