"""How the hub and a :class:`ClusterNode` meet: the node's handlers (what arrives from
other replicas), the channel broker's cluster side, and wake-ups that cross replicas."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import structlog
from starlette.websockets import WebSocket

from fleetgate.controlplane.cluster.hop import relay_to_replica
from fleetgate.controlplane.cluster.hoptoken import HOP_PATH, hop_token
from fleetgate.controlplane.cluster.node import ClusterNode
from fleetgate.controlplane.hub.channelregistry import ChannelRegistry
from fleetgate.controlplane.hub.channels import ChannelBroker
from fleetgate.controlplane.hub.registry import CLOSE_DELETED, AgentConnection, Registry
from fleetgate.controlplane.hub.revocation import Revoker
from fleetgate.controlplane.hub.scheduler import Scheduler
from fleetgate.controlplane.hub.tunnels import TunnelStreams
from fleetgate.controlplane.hub.wakeups import CommandWakeups
from fleetgate.controlplane.hub.worksessions import WorkSessionClock
from fleetgate.controlplane.store import Database
from fleetgate.shared.errors import ProtocolViolation
from fleetgate.shared.protocol import ErrorMessage, decode_agent_message


__all__ = [
    "ClusterChannelRegistry",
    "ClusterClock",
    "ClusterScheduler",
    "ClusterWakeups",
    "HubBridge",
]

log = structlog.get_logger("fleetgate.controlplane.cluster")


class ClusterWakeups(CommandWakeups):
    """Command wake-ups that also reach the output streams of the other replicas."""

    def __init__(self, node: ClusterNode) -> None:
        super().__init__()
        self._node = node

    def notify(self, command_ids: Iterable[str]) -> None:
        """Wake the readers here and announce the change to the other replicas."""
        ids = list(command_ids)
        super().notify(ids)
        if ids and not self.closed:
            self._node.publish_wakes(ids)

    def notify_here(self, command_ids: Iterable[str]) -> None:
        """Wake the readers here only (the change was announced by another replica)."""
        super().notify(command_ids)


class ClusterScheduler(Scheduler):
    """The scheduler of a replica: a command scheduled here wakes the leader's."""

    def __init__(self, node: ClusterNode, *args: Any) -> None:
        super().__init__(*args)
        self._node = node

    def wake(self) -> None:
        """Look again here, and tell the leader (which may be another replica)."""
        super().wake()
        self._node.publish_poke("scheduler")

    def wake_here(self) -> None:
        """Look again here only (a poke from another replica)."""
        super().wake()


class ClusterClock(WorkSessionClock):
    """The work-session clock of a replica: a session changed here wakes the leader's."""

    def __init__(self, node: ClusterNode, db: Database) -> None:
        super().__init__(db)
        self._node = node

    def changed(self) -> None:
        """See :meth:`WorkSessionClock.changed`; the leader's clock looks again too."""
        super().changed()
        self._node.publish_poke("clock")


class ClusterChannelRegistry(ChannelRegistry):
    """The channel registry of a replica: a user enabled again here is forgotten by the
    other replicas' registries too (they remember the revocation of their own channels)."""

    def __init__(self, node: ClusterNode) -> None:
        super().__init__()
        self._node = node

    def reinstate_user(self, user_id: int) -> None:
        """See :meth:`ChannelRegistry.reinstate_user`; every replica does the same."""
        super().reinstate_user(user_id)
        self._node.publish_reinstated(user_id)

    def reinstate_here(self, user_id: int) -> None:
        """Forget the revocation here only (a note from another replica)."""
        super().reinstate_user(user_id)


class HubBridge:
    """The node's :class:`~fleetgate.controlplane.cluster.handlers.Handlers` and the broker's
    :class:`~fleetgate.controlplane.hub.channels.ChannelCluster`, over one hub."""

    def __init__(
        self,
        node: ClusterNode,
        registry: Registry,
        broker: ChannelBroker,
        wakeups: ClusterWakeups,
        *,
        max_frame_bytes: int,
    ) -> None:
        self.node = node
        self._registry = registry
        self._broker = broker
        self._wakeups = wakeups
        self._max_frame_bytes = max_frame_bytes
        self.revoker: Revoker | None = None
        self.scheduler: ClusterScheduler | None = None
        self.clock: WorkSessionClock | None = None
        self.tunnels: TunnelStreams | None = None

    # -- Handlers --------------------------------------------------------------------

    def local(self, server_id: str) -> AgentConnection | None:
        """See :class:`~fleetgate.controlplane.cluster.handlers.Handlers`."""
        return self._registry.local(server_id)

    def local_links(self) -> list[AgentConnection]:
        """See :class:`~fleetgate.controlplane.cluster.handlers.Handlers`."""
        return self._registry.connections()

    def waiting(self, channel_id: str) -> bool:
        """See :class:`~fleetgate.controlplane.cluster.handlers.Handlers`."""
        return self._broker.waiting(channel_id)

    async def channel_answer(self, channel_id: str, server_id: str, error: str) -> None:
        """See :class:`~fleetgate.controlplane.cluster.handlers.Handlers`."""
        try:
            message = decode_agent_message(error, max_bytes=len(error) + 1)
        except ProtocolViolation:
            log.warning("cluster.bad_channel_answer", channel_id=channel_id)
            return
        if isinstance(message, ErrorMessage):
            self._broker.refused(server_id, message)

    async def revoked(self, revocation: dict[str, Any]) -> None:
        """See :class:`~fleetgate.controlplane.cluster.handlers.Handlers`."""
        if self.revoker is not None:
            await self.revoker.apply_remote(revocation)

    def wake(self, command_ids: list[str]) -> None:
        """See :class:`~fleetgate.controlplane.cluster.handlers.Handlers`."""
        self._wakeups.notify_here(command_ids)

    def poked(self, what: str) -> None:
        """See :class:`~fleetgate.controlplane.cluster.handlers.Handlers`."""
        if what == "scheduler" and self.scheduler is not None:
            self.scheduler.wake_here()
        elif what == "clock" and self.clock is not None:
            self.clock.wake()

    async def kicked(self, server_id: str) -> None:
        """See :class:`~fleetgate.controlplane.cluster.handlers.Handlers`."""
        conn = self._registry.local(server_id)
        if conn is not None:
            log.info("cluster.link_kicked", server_id=server_id)
            await conn.close(CLOSE_DELETED, "server deleted")

    def reinstated(self, user_id: int) -> None:
        """See :class:`~fleetgate.controlplane.cluster.handlers.Handlers`."""
        registry = self._broker.open
        if isinstance(registry, ClusterChannelRegistry):
            registry.reinstate_here(user_id)

    def tunnel_closed(self, tunnel_id: str, code: str, detail: str) -> None:
        """See :class:`~fleetgate.controlplane.cluster.handlers.Handlers`."""
        if self.tunnels is not None:
            self.tunnels.closed_elsewhere(tunnel_id, code, detail)

    # -- ChannelCluster ----------------------------------------------------------------

    async def channel_waiting(self, channel_id: str) -> None:
        """See :class:`~fleetgate.controlplane.hub.channels.ChannelCluster`."""
        await self.node.channel_waiting(channel_id)

    async def channel_done(self, channel_id: str) -> None:
        """See :class:`~fleetgate.controlplane.hub.channels.ChannelCluster`."""
        await self.node.channel_done(channel_id)

    async def answer_channel(self, channel_id: str, server_id: str, error: str) -> bool:
        """See :class:`~fleetgate.controlplane.hub.channels.ChannelCluster`."""
        return await self.node.answer_channel(channel_id, server_id, error)

    async def relay_agent(self, websocket: WebSocket, server_id: str, channel_id: str) -> bool:
        """See :class:`~fleetgate.controlplane.hub.channels.ChannelCluster`."""
        base = await self.node.channel_replica(channel_id)
        if base is None or base.rstrip("/") == self.node.internal_url.rstrip("/"):
            return False
        scheme, rest = base.rstrip("/").split("://", 1)
        url = f"{'wss' if scheme == 'https' else 'ws'}://{rest}"
        url += HOP_PATH.format(channel_id=channel_id)
        token = hop_token(self.node.secret, channel_id, server_id)
        log.info("cluster.channel_hop", channel_id=channel_id, to=base)
        await websocket.accept()
        await relay_to_replica(websocket, url, token, max_size=self._max_frame_bytes)
        return True
