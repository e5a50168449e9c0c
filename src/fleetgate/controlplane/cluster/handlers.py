"""What a replica's cluster node needs from its hub: the links held here, the clients
waiting here, and what to do with what other replicas announce."""

from __future__ import annotations

from typing import Any, Protocol

from fleetgate.controlplane.hub.registry import AgentConnection


__all__ = ["Handlers"]


class Handlers(Protocol):
    """What the node needs from the hub."""

    def local(self, server_id: str) -> AgentConnection | None:
        """The agent's link on this replica."""
        ...

    def local_links(self) -> list[AgentConnection]:
        """Every agent link on this replica."""
        ...

    def waiting(self, channel_id: str) -> bool:
        """Whether a client waits here for the agent's side of this channel."""
        ...

    async def channel_answer(self, channel_id: str, server_id: str, error: str) -> None:
        """The agent's ``error`` (encoded) about a channel whose client waits here."""
        ...

    async def revoked(self, revocation: dict[str, Any]) -> None:
        """A revocation made on another replica: end what it covers here."""
        ...

    def wake(self, command_ids: list[str]) -> None:
        """Commands changed on another replica: wake their output streams here."""
        ...

    def poked(self, what: str) -> None:
        """``scheduler`` or ``clock``: look again (something changed on some replica)."""
        ...

    async def kicked(self, server_id: str) -> None:
        """The server was deleted on another replica: close its link here."""
        ...

    def tunnel_closed(self, tunnel_id: str, code: str, detail: str) -> None:
        """A tunnel was closed on another replica: forget it, end its streams here."""
        ...

    def reinstated(self, user_id: int) -> None:
        """A disabled user was enabled again on some replica."""
        ...
