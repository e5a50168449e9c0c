"""The ``ssh`` channel service: one channel = one SSH connection to the in-process server.

``check`` refuses early (SSH disabled, no CA pinned); ``serve`` loads asyncssh (only now,
so an idle agent never does) and runs :class:`~fleetgate.agent.ssh.server.SshConnection`.
The router ends the channel at its grant's expiry and on ``channel.close``; a
``work_session.ended`` ends every connection of that session (:meth:`end_work_session`).
The client is told why in the SSH disconnect message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

import structlog

from fleetgate.agent.backhaul import ChannelLink
from fleetgate.agent.config import AgentConfig
from fleetgate.agent.errors import ChannelRefused
from fleetgate.agent.exec.spawn import find_setpriv
from fleetgate.agent.ssh.context import Reporter, SshContext
from fleetgate.agent.tunnel.policy import StreamBook, TunnelPolicy
from fleetgate.agent.websh.manager import TerminalManager
from fleetgate.shared.protocol import ChannelOpen, GrantClaims, SshSpec
from fleetgate.shared.protocol.ssh import SSH_CHANNEL_SCOPES


if TYPE_CHECKING:
    from fleetgate.agent.ssh.server import SshConnection


__all__ = ["SshService"]

log = structlog.get_logger(__name__)


class SshService:
    """Serves ``ssh`` channels (scope: any SSH scope; each request is checked later)."""

    kind = "ssh"
    scope = SSH_CHANNEL_SCOPES

    def __init__(
        self,
        config: AgentConfig,
        terminals: TerminalManager,
        *,
        report: Reporter | None = None,
        streams: StreamBook | None = None,
    ) -> None:
        self._config = config
        tunnel = config.tunnel
        self._streams = (
            streams
            if streams is not None
            else StreamBook(tunnel.max_streams_per_tunnel, tunnel.max_streams)
        )
        self._terminals = terminals
        self._report = report
        self._connections: dict[UUID, SshConnection] = {}

    def _context(self) -> SshContext:
        ca = self._config.identity.ssh_ca_key
        assert ca is not None  # check() refused the channel otherwise
        return SshContext(
            config=self._config,
            server_id=self._config.identity.server_id,
            ca_key=ca,
            host_key_file=self._config.ssh_host_key_file,
            terminals=self._terminals,
            tunnels=TunnelPolicy.from_config(self._config.tunnel),
            streams=self._streams,
            setpriv=find_setpriv(),
            report=self._report,
        )

    def check(self, message: ChannelOpen) -> None:
        """Refuse when SSH is off, no CA is pinned, or there is no host key (no I/O but a stat)."""
        if not isinstance(message.spec, SshSpec):
            raise ChannelRefused("invalid", "not an ssh channel")
        if not self._config.ssh.enabled:
            raise ChannelRefused(
                "ssh_disabled", "SSH is disabled on this server ([ssh] enabled = false)"
            )
        if self._config.identity.ssh_ca_key is None:
            raise ChannelRefused(
                "ssh_unavailable",
                "no SSH certificate authority is pinned (identity.ssh_ca_key); "
                "register the agent again",
            )
        if not self._config.ssh_host_key_file.is_file():
            raise ChannelRefused("ssh_unavailable", "the agent has no SSH host key yet")

    async def serve(
        self, message: ChannelOpen, link: ChannelLink, claims: GrantClaims | None
    ) -> None:
        """Run the SSH connection until it ends (or the channel is ended)."""
        from fleetgate.agent.ssh.server import (
            SshConnection,
        )  # lazy: asyncssh loads with the first ssh channel

        spec = message.spec
        assert isinstance(spec, SshSpec)
        connection = SshConnection(
            self._context(), channel_id=message.channel_id, username=spec.username, claims=claims
        )
        self._connections[message.channel_id] = connection
        try:
            with structlog.contextvars.bound_contextvars(ssh_user=spec.username):
                await connection.serve(link)
        finally:
            self._connections.pop(message.channel_id, None)

    def end_work_session(self, work_session: str, status: str) -> int:
        """Disconnect every connection of ``work_session``; how many there were."""
        ended = [c for c in self._connections.values() if c.work_session == work_session]
        for connection in ended:
            connection.disconnect(f"work session {work_session} has ended ({status})")
        return len(ended)
