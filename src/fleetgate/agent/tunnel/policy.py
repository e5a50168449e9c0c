"""Tunnel policy, pure: which targets a tunnel may reach and how many streams it may hold.

No I/O and no event loop: the service asks, this module answers with a :class:`Refusal`
(stable code + message for people) or lets the stream through. Codes:

- ``tunnel_disabled``: ``[tunnel] enabled`` is false on this server (the default);
- ``tunnel_port_not_allowed``: the port is not in ``[tunnel] allowed_ports``;
- ``tunnel_target_not_allowed``: the target host is not a loopback address;
- ``tunnel_stream_limit``: ``max_streams_per_tunnel`` or ``max_streams`` is reached.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from uuid import UUID

from fleetgate.agent.config.access import TunnelConfig
from fleetgate.shared.addresses import loopback_address


__all__ = [
    "Refusal",
    "StreamBook",
    "StreamSlots",
    "TunnelPolicy",
    "describe_ports",
    "port_allowed",
]


@dataclass(frozen=True)
class Refusal:
    """Why a tunnel stream is not allowed."""

    code: str
    message: str


def port_allowed(ranges: Sequence[tuple[int, int]], port: int) -> bool:
    """Whether ``port`` lies in one of the inclusive ``ranges``."""
    return any(low <= port <= high for low, high in ranges)


def describe_ports(ranges: Sequence[tuple[int, int]]) -> str:
    """``22, 8000-8099`` (for messages), or ``none`` for an empty allow-list."""
    if not ranges:
        return "none"
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


@dataclass(frozen=True)
class TunnelPolicy:
    """The server's tunnel settings as decisions."""

    enabled: bool
    allowed_ports: tuple[tuple[int, int], ...]

    @classmethod
    def from_config(cls, config: TunnelConfig) -> TunnelPolicy:
        """The policy of the ``[tunnel]`` section."""
        return cls(enabled=config.enabled, allowed_ports=config.allowed_ports)

    def target(self, host: str | None, port: int) -> str | Refusal:
        """The loopback address to connect to for ``host:port``, or why not.

        Checked in the order an operator fixes them: the feature, then the host, then
        the port.
        """
        if not self.enabled:
            return Refusal(
                "tunnel_disabled",
                "tunnels are disabled on this server ([tunnel] enabled = false in its "
                "agent configuration)",
            )
        address = loopback_address(host)
        if address is None:
            return Refusal(
                "tunnel_target_not_allowed",
                f"tunnels only reach this server's loopback; {host!r} is not a loopback address",
            )
        if not port_allowed(self.allowed_ports, port):
            return Refusal(
                "tunnel_port_not_allowed",
                f"port {port} is not allowed for tunnels on this server (allowed: "
                f"{describe_ports(self.allowed_ports)}; see [tunnel] allowed_ports)",
            )
        return address


@dataclass
class StreamBook:
    """Streams open now, per tunnel and in total, against the configured limits."""

    max_per_tunnel: int
    max_total: int
    _open: Counter[UUID] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """Streams open through all tunnels."""
        return sum(self._open.values())

    def count(self, tunnel_id: UUID) -> int:
        """Streams open through one tunnel."""
        return self._open[tunnel_id]

    def refusal(self, tunnel_id: UUID) -> Refusal | None:
        """Why one more stream of ``tunnel_id`` would exceed a limit, if it would."""
        if self.total >= self.max_total:
            return Refusal(
                "tunnel_stream_limit",
                f"this server already carries {self.max_total} tunnel streams "
                "([tunnel] max_streams)",
            )
        if self._open[tunnel_id] >= self.max_per_tunnel:
            return Refusal(
                "tunnel_stream_limit",
                f"this tunnel already carries {self.max_per_tunnel} streams "
                "([tunnel] max_streams_per_tunnel)",
            )
        return None

    def admit(self, tunnel_id: UUID) -> Refusal | None:
        """Count one more stream of ``tunnel_id`` unless a limit refuses it."""
        refusal = self.refusal(tunnel_id)
        if refusal is None:
            self._open[tunnel_id] += 1
        return refusal

    def release(self, tunnel_id: UUID) -> None:
        """Forget one stream of ``tunnel_id`` (admitted before)."""
        if self._open[tunnel_id] <= 1:
            del self._open[tunnel_id]
        else:
            self._open[tunnel_id] -= 1


@dataclass
class StreamSlots:
    """One holder's streams in a :class:`StreamBook` (an SSH connection's ``-L`` / ``-R``
    streams), so that whatever happened to each of them, all are given back at its end."""

    book: StreamBook
    key: UUID
    held: int = 0

    def take(self) -> Refusal | None:
        """Count one more stream unless a limit refuses it."""
        refusal = self.book.admit(self.key)
        if refusal is None:
            self.held += 1
        return refusal

    def give_back(self) -> None:
        """Forget one stream taken before (nothing once all have been given back)."""
        if self.held > 0:
            self.held -= 1
            self.book.release(self.key)

    def give_back_all(self) -> None:
        """Forget every stream still held (the holder has ended)."""
        while self.held > 0:
            self.give_back()
