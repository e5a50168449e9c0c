"""What the agent itself checks and records about each command: its own enforcement
(grant, elevation, environment: :func:`~fleetgate.agent.policy.command_checks.check_command`),
the command's lines in the audit log, and its process session's registration for sudo
mediation while it runs."""

from __future__ import annotations

from collections.abc import Callable, Collection
from time import time

from fleetgate.agent.audit import AuditLog
from fleetgate.agent.policy import GrantPolicy
from fleetgate.agent.policy.command_checks import CheckedCommand, check_command
from fleetgate.agent.sudo import SudoSessions
from fleetgate.agent.sudo.elevation import ElevationPolicy
from fleetgate.shared.protocol import CommandRun, GrantClaims


__all__ = ["CommandGate"]


class CommandGate:
    """Local enforcement and the audit trail of the dispatcher's commands."""

    def __init__(
        self,
        *,
        grants: GrantPolicy,
        elevation: ElevationPolicy | None,
        allowed_env: Collection[str],
        audit: AuditLog | None,
        sudo: SudoSessions | None,
    ) -> None:
        self._grants = grants
        self._elevation = elevation or ElevationPolicy()
        self._allowed_env = frozenset(allowed_env)
        self._audit = audit
        self.sudo = sudo

    def audit(self, event: str, message: CommandRun, **fields: object) -> None:
        """One audit line: the command, the account it runs as, who asked for it and
        under which work session (``claims``'s when verified, else the message's)."""
        if self._audit is not None:
            requester = message.requested_by
            self._audit.record(
                event,
                command_id=str(message.command_id),
                user=message.username,
                group=message.groupname,
                requested_by=None if requester is None else requester.model_dump(),
                work_session=message.work_session,
                **fields,
            )

    def check(self, message: CommandRun) -> CheckedCommand:
        """Local enforcement (:func:`check_command`), and the audit line of an elevation."""
        checked = check_command(
            message,
            grants=self._grants,
            elevate=self._elevation.check,
            allowed_env=self._allowed_env,
            now=time(),
        )
        if message.sudo:
            refused = checked.refused
            self.audit(
                "sudo.decision",
                checked.message,
                allowed=refused is None,
                code="allowed" if refused is None else refused.code,
                via="api",
                line=checked.message.line,
            )
        return checked

    def tracker(
        self, message: CommandRun, claims: GrantClaims | None
    ) -> Callable[[int], Callable[[], None]] | None:
        """Registers the command's process session for sudo mediation while it runs."""
        sudo = self.sudo
        if sudo is None:
            return None
        label = f"command {message.command_id}"

        def track(pid: int) -> Callable[[], None]:
            # start_new_session: the command's pid is its process session id.
            sudo.register(pid, claims, label=label)
            return lambda: sudo.unregister(pid)

        return track
