"""A kind of channel whose implementation is imported when its first channel opens.

Most agents serve file transfers, tunnels and SSH rarely or never; their modules (and
what they import: ctypes, asyncssh...) cost resident memory for the agent's whole life
once imported. :class:`LazyService` stands for such a kind in the router: the router
sees its ``kind`` from the start, and the first ``channel.open`` of that kind builds the
real service (``load``), which then serves every channel of the kind. That first open
pays the import once, on the backhaul reader (milliseconds: modules, no I/O).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

from fleetgate.agent.backhaul import ChannelLink
from fleetgate.agent.channels.router import ChannelService
from fleetgate.agent.errors import ChannelRefused
from fleetgate.shared.protocol import ChannelOpen, GrantClaims


__all__ = ["LazyService"]

log = structlog.get_logger(__name__)

S = TypeVar("S", bound=ChannelService)


class LazyService(Generic[S]):
    """Stands for the service of ``kind`` until its first channel, then delegates to it."""

    def __init__(self, kind: str, load: Callable[[], S]) -> None:
        self.kind = kind
        self._load: Callable[[], S] | None = load
        self._service: S | None = None

    @property
    def loaded(self) -> S | None:
        """The real service once built, else ``None`` (nothing of the kind ever opened)."""
        return self._service

    @property
    def service(self) -> S:
        """The real service, built (and its modules imported) on first use.

        Raises:
            ChannelRefused: ``unavailable``, the implementation cannot be loaded (a broken
                installation); the agent goes on serving the other kinds.
        """
        if self._service is None:
            assert self._load is not None
            try:
                service = self._load()
            except ImportError as exc:
                log.error("channel.kind_unavailable", kind=self.kind, error=str(exc))
                raise ChannelRefused(
                    "unavailable", f"this agent cannot load its {self.kind} service"
                ) from exc
            self._service, self._load = service, None
            log.info("channel.kind_loaded", kind=self.kind)
        return self._service

    @property
    def scope(self) -> str | tuple[str, ...]:
        """The real service's scope (asked first by the router: this loads it)."""
        return self.service.scope

    def check(self, message: ChannelOpen) -> None:
        """The real service's early refusals."""
        self.service.check(message)

    async def serve(
        self, message: ChannelOpen, link: ChannelLink, claims: GrantClaims | None
    ) -> None:
        """Served by the real service."""
        await self.service.serve(message, link, claims)
