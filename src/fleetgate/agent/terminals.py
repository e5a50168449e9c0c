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

from fleetgate.agent.channels.lazy import LazyService
from fleetgate.agent.config import AgentConfig


if TYPE_CHECKING:
    from fleetgate.agent.websh.manager import ShellEnded, ShellStarted
    from fleetgate.agent.websh.service import WebshService


__all__ = ["Terminals"]


class Terminals(LazyService["WebshService"]):
    """Registered as the ``websh`` kind; builds the real service on first need and runs it
    in :meth:`run`'s task group."""

    def __init__(
        self,
        config: AgentConfig,
        key: str,
        *,
        on_shell_started: ShellStarted | None = None,
        on_shell_ended: ShellEnded | None = None,
    ) -> None:
        super().__init__("websh", self._build)
        self._config = config
        self._key = key
        self._on_shell_started = on_shell_started
        self._on_shell_ended = on_shell_ended
        self._tg: asyncio.TaskGroup | None = None
        self._running = False

    def _build(self) -> WebshService:
        from fleetgate.agent.websh.service import WebshService

        service = WebshService(
            self._config,
            self._key,
            on_shell_started=self._on_shell_started,
            on_shell_ended=self._on_shell_ended,
        )
        # It starts running at once when run() already runs (else when it starts).
        self._start(service)
        return service

    async def run(self) -> None:
        """Own the real service's run (terminals, recording uploads) once it exists."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                service = self.loaded
                if service is None and self._recordings_wait():
                    service = self.service
                self._start(service)
                await asyncio.Event().wait()  # until cancelled (shutdown)
            finally:
                self._tg = None

    def _start(self, service: WebshService | None) -> None:
        # The manager's TaskGroup is entered within two turns of the loop; a terminal
        # asked for sooner (on a pre-dialled channel) waits for it (TerminalManager._owner).
        if service is not None and self._tg is not None and not self._running:
            self._running = True
            self._tg.create_task(service.run(), name="websh-service")

    def _recordings_wait(self) -> bool:
        try:
            return any(self._config.recordings_dir.glob("*.cast"))
        except OSError:
            return True  # let the shipper find out and say why

    def end(self, resource_id: UUID, reason: str) -> bool:
        """End a terminal now (the router's ``EndsResources``); none exists before the
        service does."""
        service = self.loaded
        return service is not None and service.end(resource_id, reason)
