"""The configuration of what the agent keeps and spends: bounds on work and memory, the
spool of finished commands, logging and the audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from fleetgate.agent.config.section import Section
from fleetgate.shared.protocol.limits import DEFAULT_MAX_MESSAGE_BYTES


__all__ = ["AuditConfig", "LimitsConfig", "LoggingConfig", "SpoolConfig"]


class LimitsConfig(Section):
    """Bounds on work and memory."""

    max_concurrent_commands: int = Field(default=16, gt=0, le=4096)
    """Commands above this wait, in arrival order."""
    max_queued_commands: int = Field(default=10_000, gt=0)
    """Commands accepted but waiting for a slot; beyond this they are refused."""
    command_timeout: float = Field(default=1800.0, gt=0)
    """Default per-command timeout; the command's own ``timeout`` overrides it."""
    kill_grace: float = Field(default=5.0, ge=0)
    """Seconds between SIGTERM and SIGKILL when a command times out."""
    output_chunk_bytes: int = Field(default=4096, ge=256, le=1024 * 1024)
    output_flush_interval: float = Field(default=0.1, gt=0, le=10)
    result_cap_bytes: int = Field(default=1024 * 1024, ge=1024, le=16 * 1024 * 1024)
    """The final result keeps this many bytes of output: half head, half tail."""
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=64 * 1024)
    """Largest backhaul message accepted; larger ones are answered with an error."""
    max_frame_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024)
    """Largest frame accepted on a channel websocket (terminals, files, tunnels)."""
    max_channels: int = Field(default=1024, gt=0, le=65_536)
    """Open channels of every kind together; beyond this new ones are refused."""
    outbox_max_reports: int = Field(default=100_000, gt=0)
    """Unconfirmed reports kept; producers wait when it is full."""
    shutdown_grace: float = Field(default=20.0, ge=0)
    """On SIGTERM, running commands get this long to finish and their reports to be
    confirmed; keep it below systemd's TimeoutStopSec."""


class SpoolConfig(Section):
    """How long finished commands are remembered, to answer redeliveries (the oldest go
    first when any bound is exceeded; unconfirmed reports are never dropped)."""

    max_finished_commands: int = Field(default=100_000, gt=0)
    max_result_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    """Total size of the stored final results."""
    max_age: float = Field(default=14 * 24 * 3600.0, gt=0)
    """Seconds after which a finished command is forgotten."""


class LoggingConfig(Section):
    """Log level and format (``auto`` is JSON unless stderr is a terminal)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class AuditConfig(Section):
    """The append-only audit log of commands (JSON lines, mode 0600).

    Rotation is by size, in the agent itself (no logrotate needed, no lost lines when it
    rotates): when the file would exceed ``max_bytes`` it becomes ``audit.log.1``, older
    ones shift up, and beyond ``backups`` the oldest is removed.
    """

    enabled: bool = True
    file: Path | None = None
    """Default: ``audit.log`` in ``logs_dir``."""
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=4096)
    backups: int = Field(default=5, ge=0, le=100)
