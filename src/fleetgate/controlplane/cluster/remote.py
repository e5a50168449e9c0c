"""Agents linked to other replicas, as this one sees them: sends become forwards, and
the mirror of every such link is kept from the cluster's notes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from pydantic import BaseModel

from fleetgate.controlplane.cluster.tables import LinkRow
from fleetgate.controlplane.hub.registry import AgentConnection
from fleetgate.shared.protocol import encode


__all__ = ["Forward", "Mirror", "RemoteLink"]

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


class Mirror:
    """The links other replicas hold, by server id, as this replica knows them (from the
    ``link``, ``unlink`` and ``down`` notes, and a resync when notes may have been lost)."""

    def __init__(self, replica_id: str, forward: Forward, kick: Callable[[str, str], None]) -> None:
        self.replica_id = replica_id
        self._forward = forward
        self._kick = kick
        self._links: dict[str, RemoteLink] = {}

    def __len__(self) -> int:
        return len(self._links)

    def get(self, server_id: str) -> RemoteLink | None:
        """The agent's link on another (live) replica, if any."""
        link = self._links.get(server_id)
        return None if link is None or link.closed.is_set() else link

    def server_ids(self) -> list[str]:
        """Servers linked to other replicas."""
        return [sid for sid, link in self._links.items() if not link.closed.is_set()]

    def update(self, rows: Iterable[LinkRow]) -> set[str]:
        """Mirror the links of ``rows`` that other replicas hold (this one's own are not
        mirrored); the servers they are of."""
        seen = set()
        for row in rows:
            if row.replica_id != self.replica_id:
                self._put(row)
                seen.add(row.server_id)
        return seen

    def resync(self, rows: Iterable[LinkRow]) -> None:
        """Mirror exactly the links of ``rows`` (every live one): the others are dropped."""
        seen = self.update(rows)
        for server_id in [sid for sid in self._links if sid not in seen]:
            self.drop(server_id)

    def unlink(self, server_id: str, replica_id: str | None) -> None:
        """The link of ``server_id`` on ``replica_id`` ended (a newer one stays)."""
        link = self._links.get(server_id)
        if link is not None and link.replica_id == replica_id:
            self.drop(server_id)

    def replica_down(self, replica_id: str) -> None:
        """``replica_id`` is gone: so are the links it held."""
        for server_id in [s for s, l in self._links.items() if l.replica_id == replica_id]:
            self.drop(server_id)

    def _put(self, row: LinkRow) -> None:
        old = self._links.get(row.server_id)
        if old is not None and (old.replica_id, old.connected_at) == (
            row.replica_id,
            row.connected_at,
        ):
            return
        self.drop(row.server_id)
        self._links[row.server_id] = RemoteLink(row, row.hostname or "", self._forward, self._kick)

    def drop(self, server_id: str) -> None:
        """Forget the link of ``server_id`` (held elsewhere, or now here); it is closed."""
        link = self._links.pop(server_id, None)
        if link is not None:
            link.closed.set()
