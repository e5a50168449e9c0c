"""What the backhaul needs from the rest of the agent: the dispatcher's side (commands,
work-session ends) and the channel router's (channel opens, closes, terminal ends). Each
is called from the backhaul's reader and must never block it."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol
from uuid import UUID

from fleetgate.shared.protocol import (
    ChannelClose,
    ChannelOpen,
    CommandRun,
    ErrorMessage,
    TerminalEnd,
    WorkSessionEnded,
)


__all__ = ["ChannelHandler", "CommandHandler"]


class CommandHandler(Protocol):
    """What the backhaul needs from the dispatcher."""

    def running(self) -> list[UUID]:
        """Ids of the commands in progress, announced in ``hello``."""
        ...

    def on_command(self, message: CommandRun, delivered_at: datetime) -> ErrorMessage | None:
        """Accept a command without blocking; return an error to send back, if refused."""
        ...

    def on_work_session_ended(self, message: WorkSessionEnded) -> None:
        """Revoke what the work session allowed, at once (must not block)."""
        ...


class ChannelHandler(Protocol):
    """What the backhaul needs from the channel router."""

    def on_open(self, message: ChannelOpen) -> ErrorMessage | None:
        """Accept a channel without blocking; return an error to send back, if refused."""
        ...

    def on_close(self, message: ChannelClose) -> None:
        """End a channel the control plane no longer wants."""
        ...

    def on_terminal_end(self, message: TerminalEnd) -> None:
        """End a terminal (attached or detached) the control plane revoked."""
        ...
