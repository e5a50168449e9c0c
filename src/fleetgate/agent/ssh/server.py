"""One SSH connection over one ``ssh`` channel: asyncssh on the channel, no listening port.

asyncssh's server side runs on :class:`~fleetgate.agent.ssh.transport.LinkTransport`,
which carries its bytes in the channel's frames (framed like a tunnel stream). Authentication
accepts only user certificates of the pinned CA whose key id binds them to this server
and to the channel's work session; the reason of a refusal is sent to the client as an
authentication banner (OpenSSH prints it above ``Permission denied``). Every request is
gated by its scope (``fleetgate.shared.protocol.ssh.SSH_SCOPES``) against the channel's
grant (the sessions themselves are :mod:`~fleetgate.agent.ssh.sessions`). This module
imports asyncssh: it is loaded when the first ``ssh`` channel opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import asyncssh
import structlog

from fleetgate.agent.errors import ChannelClosed, CommandError
from fleetgate.agent.ssh.callbacks import ServerCallbacks
from fleetgate.agent.ssh.certs import CertificateFacts, refusal
from fleetgate.agent.ssh.context import SshContext, SshRefusal, scope_refusal
from fleetgate.agent.ssh.forwards import Forwards
from fleetgate.agent.ssh.remote import bind_host, remote_forward_refusal
from fleetgate.agent.ssh.sessions import Sessions, resolve_user
from fleetgate.agent.ssh.transport import LinkTransport, LinkTunnel
from fleetgate.agent.tunnel.policy import Refusal
from fleetgate.shared.protocol.grants import GrantClaims
from fleetgate.shared.pump import Link


__all__ = ["SshConnection"]

log = structlog.get_logger(__name__)
asyncssh.set_log_level("WARNING")

FLUSH_TIMEOUT = 2.0
"""Seconds the disconnect message gets to reach the client when the agent ends a connection."""
_USER_CERT = 1
"""OpenSSH's certificate type of user certificates (``SSH_CERT_TYPE_USER``)."""


class SshConnection:
    """The SSH server side of one channel, from the handshake to the disconnect."""

    def __init__(
        self,
        ctx: SshContext,
        *,
        channel_id: uuid.UUID,
        username: str,
        claims: GrantClaims | None,
    ) -> None:
        self.ctx = ctx
        self.channel_id = channel_id
        self.username = username
        self.claims = claims
        self.work_session = None if claims is None else claims.work_session
        self.notices: list[str] = []
        self._conn: asyncssh.SSHServerConnection | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._ending: str | None = None
        self.sessions = Sessions(self)
        self.forwards = Forwards(ctx.streams, channel_id)

    # -- life ---------------------------------------------------------------------------

    async def serve(self, link: Link) -> None:
        """Serve the connection until it ends; cancelling disconnects with the reason."""
        transport = LinkTransport(link)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                moving = tg.create_task(transport.run())
                try:
                    await self._run(LinkTunnel(transport))
                    self.sessions.cancel_all()  # the client went away
                except asyncio.CancelledError as exc:
                    reason = str(exc.args[0]) if exc.args else self._end_reason()
                    self.disconnect(reason)
                    with contextlib.suppress(TimeoutError, ChannelClosed):
                        async with asyncio.timeout(FLUSH_TIMEOUT):
                            await asyncio.shield(moving)
                    raise
        finally:
            self._tg = None
            self.forwards.close()
            transport.close()

    def _end_reason(self) -> str:
        expires = None if self.claims is None else self.claims.expires_at
        if expires is not None and expires <= time.time() + 1:
            return "the work session has expired"
        return "the agent ended the connection"

    async def _run(self, tunnel: LinkTunnel) -> None:
        options = self._options()
        try:
            # "Reverse": asyncssh runs its server side on a connection we hand it.
            conn = await asyncssh.connect_reverse(tunnel=tunnel, options=options)
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            log.info("ssh.handshake_failed", reason=str(exc) or type(exc).__name__)
            tunnel.abort()
            return
        self._conn = conn
        if self._ending is not None:
            self.disconnect(self._ending)
        await conn.wait_closed()

    def _options(self) -> asyncssh.SSHServerConnectionOptions:
        ssh = self.ctx.config.ssh
        return asyncssh.SSHServerConnectionOptions(
            server_factory=lambda: ServerCallbacks(self),
            server_host_keys=[asyncssh.read_private_key(str(self.ctx.host_key_file))],
            encoding=None,
            line_editor=False,
            allow_pty=True,
            # Requests for either reach our hooks (see _Server.connection_made), which
            # refuse them and tell the client which configuration key is involved.
            agent_forwarding=False,
            x11_forwarding=False,
            login_timeout=ssh.login_timeout,
            password_auth=False,
            kbdint_auth=False,
            gss_host=None,
            allow_scp=False,
            # AES-GCM runs in OpenSSL (through cryptography); asyncssh's ChaCha20-Poly1305,
            # OpenSSH's first choice, costs more CPU per byte in the agent. Offering only
            # these makes every OpenSSH client pick AES-GCM.
            encryption_algs=["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"],
            # What a client may send on one session before the agent consumed it: 2 MiB
            # keeps an SFTP transfer's requests (64 x 32 KiB) in flight over the relay
            # hops, and bounds memory (MAX_SESSIONS x window per connection).
            window=2 * 1024 * 1024,
            max_pktsize=256 * 1024,
        )

    def disconnect(self, reason: str) -> None:
        """End the connection; the client prints ``reason``."""
        if self._conn is None:
            self._ending = reason
            return
        log.info("ssh.disconnect", reason=reason)
        self._conn.disconnect(asyncssh.DISC_BY_APPLICATION, f"fleetgate: {reason}")

    # -- reports -------------------------------------------------------------------------

    async def report(self, op: str, **fields: Any) -> None:
        """Put what happened on the work session's timeline (and in the agent's log)."""
        log.info("ssh.event", op=op, user=self.username, **fields)
        if self.ctx.report is None:
            return
        event = {
            "event_id": uuid.uuid4(),
            "channel_id": self.channel_id,
            "work_session": self.work_session,
            "op": op,
            "user": self.username,
            "at": datetime.now(UTC),
            **fields,
        }
        await self.ctx.report(event)

    # -- requests --------------------------------------------------------------------------

    def background(self, coro: Coroutine[Any, Any, None]) -> bool:
        """Run ``coro`` in the connection's task group; once it has ended, ``coro`` is
        dropped (closed) and the answer is ``False``."""
        if self._tg is None:
            coro.close()
            return False
        self._tg.create_task(coro)
        return True

    def start_session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """A session's request arrived (shell, exec, subsystem): handle it in a task."""
        self.sessions.start(process, self._tg)

    def forward_target(self, host: str, port: int) -> str | SshRefusal:
        """The address ``ssh -L`` to ``host:port`` connects to (a loopback address, never a
        name to resolve), or why it is refused: scope, the tunnel policy, the stream limits."""
        denied = scope_refusal("forward", self.claims)
        if denied is not None:
            return denied
        target = self.ctx.tunnels.target(host, port)
        if isinstance(target, Refusal):
            return SshRefusal(target.code, target.message)
        return self.forwards.refusal() or target

    def remote_forward_refusal(self, host: str, port: int) -> SshRefusal | None:
        """Why ``ssh -R`` listening on ``host:port`` is refused (scope, loopback, port)."""
        try:
            uid = resolve_user(self.username)[0].uid
        except CommandError as exc:
            return SshRefusal("unknown_user", str(exc))
        return remote_forward_refusal(host, port, uid=uid, claims=self.claims)

    async def listen_back(self, host: str, port: int) -> asyncssh.SSHListener | bool:
        """Listen on the server's loopback for ``ssh -R``; each connection accepted there
        is carried back to the client (``forwarded-tcpip``) and put on the timeline.
        ``False`` (the client is told the forward failed) when the port is taken."""
        conn = self._conn
        if conn is None:
            return False
        bind = bind_host(host)

        def accepted(orig_host: str, orig_port: int) -> bool:
            detail = f"ssh -R connection from {orig_host}:{orig_port} to port {port}"
            self.background(self.report("forward", detail=detail))
            return True

        try:
            # The client matches a forwarded connection by the address it asked for.
            listener = await conn.forward_local_port(bind, port, host, port, accepted)
        except OSError as exc:
            why = f"cannot listen on {bind}:{port}: {exc.strerror or exc}"
            self.notices.append(f"remote forwarding (-R) failed: {why}")
            await self.report("refused", code="remote_forward_unavailable", detail=why)
            return False
        await self.report("forward", detail=f"ssh -R listening on {bind}:{listener.get_port()}")
        return listener

    def certificate_refusal(self, username: str, cert: Any) -> str | None:
        """Why the presented certificate may not log in (``None``: it may)."""
        ca = asyncssh.import_public_key(self.ctx.ca_key)
        facts = CertificateFacts(
            key_id=str(getattr(cert, "_key_id", "")),
            principals=tuple(cert.principals),
            valid_after=int(getattr(cert, "_valid_after", 0)),
            valid_before=int(getattr(cert, "_valid_before", 0)),
            signed_by_pinned_ca=cert.signing_key.public_data == ca.public_data,
            is_user_certificate=getattr(cert, "_cert_type", _USER_CERT) == _USER_CERT,
        )
        if username != self.username:
            return f"this connection was opened for {self.username}, not {username}"
        return refusal(
            facts,
            username=username,
            server_id=self.ctx.server_id,
            work_session=self.work_session,
            now=time.time(),
        )
