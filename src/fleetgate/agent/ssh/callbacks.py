"""asyncssh's callbacks for one connection, answered by its :class:`SshConnection`.

asyncssh refuses a bad certificate, agent or X11 forwarding silently; these hooks tell
the client why (an authentication banner, or a line on the next session's stderr), and
route the ``sftp`` subsystem to our handler (OpenSSH's ``sftp-server`` as the user)
instead of asyncssh's own SFTP server, which would run with the agent's identity.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import asyncssh
import structlog

from fleetgate.agent.ssh.context import SshRefusal


if TYPE_CHECKING:
    from fleetgate.agent.ssh.server import SshConnection


__all__ = ["ServerCallbacks", "SessionProcess"]

log = structlog.get_logger(__name__)


class SessionProcess(asyncssh.SSHServerProcess[bytes]):
    """asyncssh's server process, except that a ``sftp`` subsystem reaches our handler
    (which runs OpenSSH's ``sftp-server`` as the user) instead of asyncssh's own SFTP
    server, which would run with the agent's identity. Other subsystems reach it too,
    and are refused there with a message."""

    def __init__(self, handler: Callable[[asyncssh.SSHServerProcess[bytes]], None]) -> None:
        super().__init__(handler, None, 3, False)

    def subsystem_requested(self, subsystem: str) -> bool:
        return True

    def session_started(self) -> None:
        chan = self._chan
        self._start_process(
            asyncssh.SSHReader(self, chan),
            asyncssh.SSHWriter(self, chan),
            asyncssh.SSHWriter(self, chan, asyncssh.EXTENDED_DATA_STDERR),
        )


class ServerCallbacks(asyncssh.SSHServer):
    """asyncssh's callbacks for one connection, answered by :class:`SshConnection`."""

    def __init__(self, owner: SshConnection) -> None:
        self._owner = owner
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        owner = self._owner
        # asyncssh refuses a bad certificate silently; check it ourselves first so the
        # client is told why (banner), then let asyncssh verify it as usual.
        original = conn._validate_openssh_certificate

        async def checked(username: str, cert: Any) -> Any:
            why = owner.certificate_refusal(username, cert)
            if why is not None:
                log.info("ssh.certificate_refused", user=username, reason=why)
                conn.send_auth_banner(f"fleetgate: {why}\r\n")
                await owner.report("refused", code="certificate_refused", detail=why)
                return None
            return await original(username, cert)

        conn._validate_openssh_certificate = checked  # type: ignore[method-assign]

        async def agent_listener() -> bool:
            owner.notices.append(
                "agent forwarding (-A) is refused: this agent does not offer it (root on "
                "the server could use your keys); each server has its own certificate"
            )
            return False

        conn.create_agent_listener = agent_listener  # type: ignore[method-assign]

        async def x11_listener(*_args: Any) -> None:
            owner.notices.append("X11 forwarding (-X) is refused: this agent does not offer it")

        conn.attach_x11_listener = x11_listener  # type: ignore[method-assign,assignment]

        def refused(why: SshRefusal) -> None:
            owner.background(owner.report("refused", code=why.code, detail=why.detail))

        owner.forwards.install(conn, owner.background, refused)

    def begin_auth(self, username: str) -> bool:
        return True

    def session_requested(self) -> SessionProcess:
        return SessionProcess(self._owner.start_session)

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if self._conn is not None:
            self._conn.send_auth_banner(
                "fleetgate: a plain key is not accepted; use the certificate from "
                "`agentctl ssh-config`\r\n"
            )
        return False

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        ca = asyncssh.import_public_key(self._owner.ctx.ca_key)
        return bool(key.public_data == ca.public_data)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        owner = self._owner
        target = owner.forward_target(dest_host, dest_port)
        if isinstance(target, SshRefusal):
            owner.background(owner.report("refused", code=target.code, detail=target.detail))
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"fleetgate: {target.detail}"
            )
        assert self._conn is not None  # connection_made came first
        owner.background(owner.report("forward", detail=f"ssh -L to {dest_host}:{dest_port}"))
        # The address the policy checked, not the client's name for it (which asyncssh
        # would resolve): a tunnel never depends on name resolution. The forwarder is
        # asyncssh's own session for this (typed apart from SSHTCPSession; it casts too).
        forwarder = self._conn.forward_connection(target, dest_port)
        return cast("Awaitable[asyncssh.SSHTCPSession[bytes]]", forwarder)

    def server_requested(
        self, listen_host: str, listen_port: int
    ) -> bool | Awaitable[asyncssh.SSHListener | bool]:
        owner = self._owner
        if not owner.ctx.config.ssh.remote_forwarding:
            owner.notices.append(
                "remote forwarding (-R) is refused: [ssh] remote_forwarding = false in the "
                "agent's configuration"
            )
            return False
        why = owner.remote_forward_refusal(listen_host, listen_port)
        if why is not None:
            owner.notices.append(f"remote forwarding (-R) is refused: {why.detail}")
            owner.background(owner.report("refused", code=why.code, detail=why.detail))
            return False
        return owner.listen_back(listen_host, listen_port)
