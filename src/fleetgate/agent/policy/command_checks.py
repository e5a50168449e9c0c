"""The agent's own checks of a ``command.run``, whatever the control plane did. Pure.

Before a command is queued for a slot, the agent decides on its own whether it may run:
no environment variable that would choose the program (:mod:`fleetgate.shared.envpolicy`),
a valid grant for exactly this command's content, and for an elevated command (``sudo``)
a line that matches a sudo pattern of the grant's work session. The outcome names the
command as it will run: the verified grant's work session (whatever the message said)
and, elevated, the pattern-checked line with the program's absolute path.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from fleetgate.agent.policy.grants import GrantPolicy, GrantRefused
from fleetgate.shared.envpolicy import denied_env_names
from fleetgate.shared.protocol import CommandFinished, CommandRun, GrantClaims, content_digest


__all__ = ["DENIED_EXIT_CODE", "CheckedCommand", "Elevate", "check_command", "denied_report"]

DENIED_EXIT_CODE = 126
"""Exit code of a command the agent refused to run (the shell's "cannot execute")."""

Elevate = Callable[[CommandRun, GrantClaims | None], str]
"""Checks an elevated command against its grant's sudo patterns and returns the line to
run, or raises :class:`GrantRefused` (``ElevationPolicy.check``)."""


@dataclass(frozen=True, slots=True)
class CheckedCommand:
    """The outcome of :func:`check_command`.

    Attributes:
        message: the command as it will run (or as far as it was checked, if refused).
        claims: the verified grant's claims (None without a grant policy's demand).
        refused: why it may not run, or None.
    """

    message: CommandRun
    claims: GrantClaims | None
    refused: GrantRefused | None


def check_command(
    message: CommandRun,
    *,
    grants: GrantPolicy,
    elevate: Elevate,
    allowed_env: Collection[str],
    now: float,
) -> CheckedCommand:
    """Check ``message`` locally (see the module docstring); never raises a refusal."""
    scope = "sudo" if message.sudo else "command"
    try:
        denied_env = denied_env_names(message.env, allowed_env)
        if denied_env:
            # Whatever the control plane let through: PATH or LD_PRELOAD from a request
            # would choose the program that runs.
            raise GrantRefused(
                "env_not_allowed",
                f"env: {denied_env[0]} may not be set by a request "
                "(allow it in the agent's exec.allowed_env)",
            )
        claims = grants.check(
            message.grant,
            command_id=message.command_id,
            scope=scope,
            now=now,
            content=content_digest(message),  # before elevation rewrites the line
        )
        if claims is not None and claims.work_session is not None:
            # The verified grant names the session, whatever the message said.
            message = message.model_copy(update={"work_session": claims.work_session})
        if message.sudo:
            message = message.model_copy(update={"line": elevate(message, claims)})
    except GrantRefused as refused:
        return CheckedCommand(message, None, refused)
    return CheckedCommand(message, claims, None)


def denied_report(
    rid: int, command_id: UUID, refused: GrantRefused, handled_at: datetime
) -> CommandFinished:
    """The final report of a command refused here: it never started."""
    return CommandFinished(
        rid=rid,
        command_id=command_id,
        handled_at=handled_at,
        elapsed_time=0.0,
        exit_code=DENIED_EXIT_CODE,
        success=False,
        result="",
        error_phase="denied",
        message=str(refused),
        code=refused.code[:64],
    )
