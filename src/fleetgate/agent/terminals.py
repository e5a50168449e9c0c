"""websh, loaded with its first terminal: the daemon's stand-in for :class:`WebshService`.

Terminals (websh channels, and SSH sessions, which use the same terminal manager) are
occasional; the websh and exec modules they need stay unimported in an idle agent. The
real service is built by the first ``websh`` channel, the first ``ssh`` channel, or at
start when recordings from an earlier run wait in the spool to be shipped. Until then no
terminal exists, so ``terminal.end`` finds nothing and there is nothing to run.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from uuid import UUID

import structlog

from fleetgate.agent.config import AgentConfig


if TYPE_CHECKING:
    from fleetgate.agent.backhaul import ChannelLink
    from fleetgate.agent.websh.manager import ShellEnded, ShellStarted
    from fleetgate.agent.websh.service import WebshService
    from fleetgate.shared.protocol import ChannelOpen, GrantClaims


__all__ = ["Terminals"]

log = structlog.get_logger(__name__)


class Terminals:
    """Registered as the ``websh`` kind; builds and runs the real service on first need."""

    kind = "websh"

    def __init__(
        self,
        config: AgentConfig,
        key: str,
        *,
        on_shell_started: ShellStarted | None = None,
        on_shell_ended: ShellEnded | None = None,
    ) -> None:
        self._config = config
        self._key = key
        self._on_shell_started = on_shell_started
        self._on_shell_ended = on_shell_ended
        self._service: WebshService | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._running = False

    @property
    def loaded(self) -> bool:
        """Whether the real service exists (a terminal was asked for, or recordings wait)."""
        return self._service is not None

    @property
    def service(self) -> WebshService:
        """The real service, built on first use; it starts running at once when
        :meth:`run` already runs (else when it starts)."""
        return self._load()

    def _load(self) -> WebshService:
        if self._service is None:
            from fleetgate.agent.websh.service import WebshService

            self._service = WebshService(
                self._config,
                self._key,
                on_shell_started=self._on_shell_started,
                on_shell_ended=self._on_shell_ended,
            )
            log.info("channel.kind_loaded", kind=self.kind)
            self._start()
        return self._service

    async def run(self) -> None:
        """Own the real service's run (terminals, recording uploads) once it exists."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                if self._service is None and self._recordings_wait():
                    self._load()
                self._start()
                await asyncio.Event().wait()  # until cancelled (shutdown)
            finally:
                self._tg = None

    def _start(self) -> None:
        # The manager's TaskGroup is entered within two turns of the loop; a terminal
        # asked for sooner (on a pre-dialled channel) waits for it (TerminalManager._owner).
        if self._service is not None and self._tg is not None and not self._running:
            self._running = True
            self._tg.create_task(self._service.run(), name="websh-service")

    def _recordings_wait(self) -> bool:
        try:
            return any(self._config.recordings_dir.glob("*.cast"))
        except OSError:
            return True  # let the shipper find out and say why

    # -- the router's side (ChannelService, EndsResources) ----------------------------

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

    def end(self, resource_id: UUID, reason: str) -> bool:
        """End a terminal now; none exists before the service does."""
        return self._service is not None and self._service.end(resource_id, reason)
