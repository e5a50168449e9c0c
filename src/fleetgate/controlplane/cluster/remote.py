"""An agent linked to another replica, as this one sees it: sends become forwards."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pydantic import BaseModel

from fleetgate.controlplane.cluster.tables import LinkRow
from fleetgate.controlplane.hub.registry import AgentConnection
from fleetgate.shared.protocol import encode


__all__ = ["Forward", "RemoteLink"]

Forward = Callable[[str, str, str], bool]
"""``forward(replica_id, server_id, frame)``: queue a frame for the replica holding the
link; whether it was accepted."""


class RemoteLink(AgentConnection):
    """The link of an agent held by another replica (``replica_id``).

    It stands where an :class:`AgentConnection` does (the registry, delivery, the channel
    broker): sending a frame stores it for the holding replica, which sends it on the
    agent's websocket. What was authorized here was authorized before the send, exactly
    as for a local link; the holder only passes the frame on.
    """

    def __init__(
        self,
        row: LinkRow,
        server_name: str,
        forward: Forward,
        kick: Callable[[str, str], None] | None = None,
    ) -> None:
        # No websocket here: the base's constructor is not called (nothing in the
        # sending path of a remote link touches one).
        self.server_id = row.server_id
        self.server_name = server_name
        self.replica_id = row.replica_id
        self.connected_at = row.connected_at
        self.last_seen_at = row.connected_at
        self.last_frame_monotonic = 0.0
        self.agent_version = row.agent_version
        self.hostname = row.hostname
        self.max_message_bytes = row.max_message_bytes
        self.features = row.features
        self.closed = asyncio.Event()
        self._forward = forward
        self._kick = kick

    async def send(self, message: BaseModel | str) -> None:
        """Forward one frame; raises ``ConnectionError`` when it could not be stored."""
        if self.closed.is_set():
            raise ConnectionError("the agent's link on another replica ended")
        text = message if isinstance(message, str) else encode(message)
        if not self._forward(self.replica_id, self.server_id, text):
            raise ConnectionError("too many frames wait for the other replicas")

    async def close(self, code: int, reason: str) -> None:
        """Ask the holding replica to close the link (the server was deleted), and
        forget it here."""
        if not self.closed.is_set() and self._kick is not None:
            self._kick(self.server_id, self.replica_id)
        self.closed.set()
