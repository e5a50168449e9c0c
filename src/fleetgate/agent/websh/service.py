"""The websh kind of channel: what the channel router calls for ``spec.kind == "websh"``."""

from __future__ import annotations

import asyncio
from uuid import UUID

from fleetgate.agent.backhaul import ChannelLink
from fleetgate.agent.config import AgentConfig
from fleetgate.agent.errors import ChannelClosed
from fleetgate.agent.websh.manager import ShellEnded, ShellStarted, TerminalManager, TerminalRequest
from fleetgate.agent.websh.shipper import RecordingShipper
from fleetgate.agent.websh.terminal import Terminal
from fleetgate.shared.protocol import ChannelOpen, GrantClaims, WebshSpec
from fleetgate.shared.protocol.websh import Exit


__all__ = ["WebshService", "request_of"]


def request_of(message: ChannelOpen) -> TerminalRequest:
    """The terminal request carried by a websh ``channel.open``."""
    spec = message.spec
    assert isinstance(spec, WebshSpec)  # the router dispatches by kind
    return TerminalRequest(
        terminal_id=spec.terminal_id,
        username=spec.username,
        groupname=spec.groupname,
        rows=spec.rows,
        cols=spec.cols,
        shell=spec.shell,
        term=spec.term,
        attach=spec.attach,
    )


class WebshService:
    """Serves websh channels with the agent's :class:`TerminalManager`, and ships their
    recordings.

    A channel that drops only detaches its terminal; a ``channel.close`` from the control
    plane (the router cancels the channel's task) ends the terminal.

    ``on_shell_started(pid, claims, terminal_id)`` and ``on_shell_ended(pid)`` (plain or
    async callables) tell the sudo mediation which session id belongs to which grant.
    """

    kind = "websh"
    scope = "websh"

    def __init__(
        self,
        config: AgentConfig,
        key: str,
        *,
        on_shell_started: ShellStarted | None = None,
        on_shell_ended: ShellEnded | None = None,
    ) -> None:
        self.manager = TerminalManager(
            config, on_shell_started=on_shell_started, on_shell_ended=on_shell_ended
        )
        self.shipper = RecordingShipper(
            config, key, self.manager.quota, busy=lambda tid: tid in self.manager.terminals
        )
        self.manager.on_recording_done = self.shipper.submit

    async def run(self) -> None:
        """Own the terminals and the recording shipper until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.manager.run(), name="websh-terminals")
            tg.create_task(self.shipper.run(), name="websh-recordings")

    def end(self, resource_id: UUID, reason: str) -> bool:
        """End terminal ``resource_id`` now, attached or detached (``terminal.end``)."""
        return self.manager.close(resource_id, reason[:200])

    def check(self, message: ChannelOpen) -> None:
        """Refuse early: disabled, too many terminals, unknown terminal, spool full."""
        self.manager.check(request_of(message))

    async def serve(
        self, message: ChannelOpen, link: ChannelLink, claims: GrantClaims | None
    ) -> None:
        """Open or reattach the terminal and serve the channel until it detaches or ends."""
        request = request_of(message)
        try:
            await self.manager.serve(request, link, claims)
        except asyncio.CancelledError:
            # channel.close (or shutdown): end the terminal and tell the client how.
            terminal = self.manager.terminals.get(request.terminal_id)
            if terminal is not None:
                terminal.close("closed")
                await self._farewell(terminal, link)
            raise

    async def _farewell(self, terminal: Terminal, link: ChannelLink) -> None:
        try:
            async with asyncio.timeout(self.manager.websh.hangup_grace + 5):
                await terminal.finished.wait()
                reason = terminal.state.close_reason or "closed"
                exit_frame = Exit(code=terminal.exit_code or 0, reason=reason)
                await link.send(exit_frame.model_dump_json())
        except (TimeoutError, ChannelClosed):
            pass
