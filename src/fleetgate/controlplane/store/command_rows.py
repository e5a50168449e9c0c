"""The rows of commands and their output: a command to create, a command as the API
shows it (mapped from :func:`~.queries.command_select`), one chunk of output."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


__all__ = ["ChunkRow", "CommandRow", "NewCommand"]


@dataclass(frozen=True)
class NewCommand:
    """A validated command create."""

    id: str
    server_id: str
    shell: str
    line: str
    username: str
    groupname: str
    env: dict[str, str]
    timeout: float | None
    requested_by: int | None
    added_at: int
    scheduled_at: int
    work_session_id: str | None = None
    grant: str | None = None
    """The signed grant sent with the command (``docs/protocol.md``), as JSON."""
    sudo: bool = False
    """Elevation: runs as root if the line matches a sudo pattern (``docs/sudo.md``)."""
    requested_token: str | None = None
    """The id of the token that asked (a service token has no ``requested_by`` user)."""


@dataclass(frozen=True)
class CommandRow:
    """A command with its server's name and its requester, as the API shows it."""

    id: str
    server_id: str
    server_name: str
    shell: str
    line: str
    username: str
    groupname: str
    env: dict[str, str]
    timeout: float | None
    requested_by: int | None
    requester_username: str | None
    requester_email: str | None
    added_at: int
    scheduled_at: int
    sent_at: int | None
    delivered_at: int | None
    acked_at: int | None
    handled_at: int | None
    cancelled_at: int | None
    elapsed_time: float | None
    exit_code: int | None
    success: bool | None
    result: str | None
    truncated: bool
    output_bytes: int | None
    error_phase: str | None
    message: str | None
    work_session_id: str | None = None
    grant: str | None = None
    sudo: bool = False
    requested_token: str | None = None
    error_code: str | None = None
    """The agent's refusal code of a command it refused (``error_phase`` ``denied``)."""

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> CommandRow:
        """Build from a row selected with :func:`~.queries.command_select`."""
        success = row["success"]
        return cls(
            id=row["id"],
            server_id=row["server_id"],
            server_name=row["server_name"],
            shell=row["shell"],
            line=row["line"],
            username=row["username"],
            groupname=row["groupname"],
            env=json.loads(row["env"]),
            timeout=row["timeout"],
            requested_by=row["requested_by"],
            requester_username=row["requester_username"],
            requester_email=row["requester_email"],
            added_at=row["added_at"],
            scheduled_at=row["scheduled_at"],
            sent_at=row["sent_at"],
            delivered_at=row["delivered_at"],
            acked_at=row["acked_at"],
            handled_at=row["handled_at"],
            cancelled_at=row["cancelled_at"],
            elapsed_time=row["elapsed_time"],
            exit_code=row["exit_code"],
            success=None if success is None else bool(success),
            result=row["result"],
            truncated=bool(row["truncated"]),
            output_bytes=row["output_bytes"],
            error_phase=row["error_phase"],
            message=row["message"],
            work_session_id=row["work_session_id"],
            grant=row["grant_token"],
            sudo=bool(row["sudo"]),
            requested_token=row["requested_token"],
            error_code=row["error_code"],
        )

    @property
    def is_final(self) -> bool:
        """Finished or cancelled: nothing more will happen to it."""
        return self.handled_at is not None or self.cancelled_at is not None


@dataclass(frozen=True)
class ChunkRow:
    """One chunk of output."""

    seq: int
    content: str
