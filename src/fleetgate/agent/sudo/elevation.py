"""Elevation through the API: a ``command.run`` with ``sudo`` runs as root only if its line
matches a sudo pattern of its work session (``docs/sudo.md``)."""

from __future__ import annotations

from fleetgate.agent.policy import GrantRefused
from fleetgate.agent.policy.sudo_decision import match_patterns
from fleetgate.agent.sudo import proc
from fleetgate.shared.protocol import CommandRun, GrantClaims
from fleetgate.shared.sudo_patterns import (
    DEBIAN_SECURE_PATH,
    Resolver,
    SudoPatternError,
    has_shell_syntax,
    parse_line,
)


__all__ = ["ElevationPolicy"]

CODE = "sudo_pattern_not_allowed"


class ElevationPolicy:
    """Checks elevated commands against the grant's patterns (blocking: ``stat``)."""

    def __init__(self, secure_path: str = DEBIAN_SECURE_PATH) -> None:
        self._resolver = Resolver.from_path(secure_path, proc.is_executable, proc.trusted_realpath)

    def check(self, message: CommandRun, claims: GrantClaims | None) -> str:
        """The line to run (the command as its absolute path), or :class:`GrantRefused`.

        Raises:
            GrantRefused: not a work-session grant, not as root, shell syntax, or no
                pattern matches.
        """
        if claims is None or claims.auth != "work_session":
            raise GrantRefused(
                "work_session_required", "elevation (sudo) is for work-session users only"
            )
        if message.username != "root" or message.groupname not in (None, "root"):
            raise GrantRefused("sudo_runas_not_allowed", "elevation runs commands as root only")
        try:
            argv = parse_line(message.line)
        except SudoPatternError as exc:
            raise GrantRefused(CODE, str(exc)) from None
        command = self._resolver.resolve(argv[0])
        if command is None or has_shell_syntax(command):
            raise GrantRefused(CODE, f"{argv[0]!r} is not a command in sudo's secure_path")
        verdict = match_patterns(claims.sudo, command, argv[1:], self._resolver)
        if not verdict.allowed:
            raise GrantRefused(verdict.code, verdict.message)
        return " ".join([command, *argv[1:]])
