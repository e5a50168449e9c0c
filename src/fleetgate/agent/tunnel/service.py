"""The ``tunnel`` channel service: one channel = one TCP connection to this server's loopback.

``check`` refuses early and cheaply (tunnels disabled, a port not allowed, a target that
is not loopback, stream limits), so the control plane can answer the client's handshake
with the reason. ``serve`` connects to the target and pumps until the stream ends or the
control plane closes the channel (the router also ends it when the grant expires).
"""

from __future__ import annotations

import asyncio
import socket

import structlog

from fleetgate.agent.backhaul import ChannelLink
from fleetgate.agent.config.access import TunnelConfig
from fleetgate.agent.errors import ChannelClosed, ChannelRefused
from fleetgate.agent.tunnel.connect import connected_at_once
from fleetgate.agent.tunnel.policy import Refusal, StreamBook, TunnelPolicy
from fleetgate.shared.protocol import ChannelOpen, GrantClaims
from fleetgate.shared.protocol.channels import TunnelSpec
from fleetgate.shared.protocol.tunnel import tunnel_error_frame
from fleetgate.shared.pump import pump


__all__ = ["TunnelService"]

log = structlog.get_logger(__name__)


class TunnelService:
    """Serves ``tunnel`` channels under the ``[tunnel]`` policy (scope ``tunnel``)."""

    kind = "tunnel"
    scope = "tunnel"

    def __init__(self, config: TunnelConfig, streams: StreamBook | None = None) -> None:
        self._config = config
        self._policy = TunnelPolicy.from_config(config)
        # Shared with the SSH service when the daemon builds both: ssh -L / -R count too.
        self.streams = (
            streams
            if streams is not None
            else StreamBook(config.max_streams_per_tunnel, config.max_streams)
        )

    def _target(self, message: ChannelOpen) -> tuple[TunnelSpec, str]:
        spec = message.spec
        if not isinstance(spec, TunnelSpec):
            raise ChannelRefused("invalid", "not a tunnel channel")
        target = self._policy.target(spec.host, spec.port)
        if isinstance(target, Refusal):
            raise ChannelRefused(target.code, target.message)
        return spec, target

    def check(self, message: ChannelOpen) -> None:
        """Refuse a stream the policy or the limits do not allow (no I/O)."""
        spec, _ = self._target(message)
        refusal = self.streams.refusal(spec.tunnel_id)
        if refusal is not None:
            raise ChannelRefused(refusal.code, refusal.message)

    async def serve(
        self, message: ChannelOpen, link: ChannelLink, claims: GrantClaims | None
    ) -> None:
        """Connect to the target and carry the stream until it ends."""
        spec, address = self._target(message)
        if spec.probe:
            return  # checked by the router and check(); the channel closes with 1000
        # check() ran before the link was dialled; another stream may have taken the slot.
        refusal = self.streams.admit(spec.tunnel_id)
        if refusal is not None:
            raise ChannelRefused(refusal.code, refusal.message)
        try:
            with structlog.contextvars.bound_contextvars(
                tunnel_id=str(spec.tunnel_id), port=spec.port
            ):
                await self._serve(spec, address, link)
        finally:
            self.streams.release(spec.tunnel_id)

    async def _serve(self, spec: TunnelSpec, address: str, link: ChannelLink) -> None:
        try:
            sock = await self._connect(address, spec.port)
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            log.info("tunnel.connect_failed", reason=reason)
            await link.send(
                tunnel_error_frame(
                    "tunnel_connect_failed", f"cannot connect to {address}:{spec.port}: {reason}"
                )
            )
            return
        # The grant's expiry is enforced by the router (it cancels this task and closes
        # the channel with 4403 work_session_expired); cancelling the pump resets ``sock``.
        result = await pump(
            sock,
            link,
            read_bytes=self._config.read_bytes,
            closed=(ChannelClosed,),
            reuse=link.reuse,
        )
        # Ended with ``end``: the router leaves the link open for the next one.
        link.kept = result.reusable
        log.info(
            "tunnel.stream_ended",
            clean=result.clean,
            reused=result.reusable,
            code=result.code,
            sent=result.sent,
            received=result.received,
        )

    async def _connect(self, address: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if connected_at_once(sock, (address, port)):
                return sock
            async with asyncio.timeout(self._config.connect_timeout):
                await asyncio.get_running_loop().sock_connect(sock, (address, port))
        except TimeoutError:
            sock.close()
            raise OSError(f"no answer within {self._config.connect_timeout:g} s") from None
        except BaseException:
            sock.close()
            raise
        return sock
