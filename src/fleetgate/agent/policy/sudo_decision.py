"""The sudo decision: may this call of ``sudo`` go ahead? Pure: no I/O.

The agent's decision server (``fleetgate.agent.sudo``) finds out who calls (the process session,
from the kernel) and what sudo is about to run (from the approval plugin), then asks
:func:`decide`. Checks run in a fixed order so the first refusal names the real reason:
unmanaged caller, work session ended or expired, no ``sudo`` scope, ``sudoedit``, a shell
(``-s``/``-i``), another target user than root, and finally the patterns.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from fleetgate.shared.sudo_patterns import CommandResolver, first_match, has_shell_syntax


__all__ = ["SessionGrant", "SudoCall", "SudoVerdict", "Unmanaged", "decide"]

Unmanaged = Literal["allow", "deny"]


@dataclass(frozen=True, slots=True)
class SessionGrant:
    """What the agent knows of a process session it started (a websh shell, a command)."""

    label: str
    work_session: str | None
    assignee: str | None
    scopes: frozenset[str]
    expires_at: float | None
    patterns: tuple[str, ...]
    ended: bool = False
    """The control plane said the work session ended (revoked, completed...)."""


@dataclass(frozen=True, slots=True)
class SudoCall:
    """One call of sudo, as the plugin describes it and the kernel confirms it.

    ``command`` is the absolute path sudo will execute, ``argv`` its argv (``argv[0]``
    as sudo sets it). ``caller_uid`` comes from the kernel, never from the plugin.
    """

    command: str
    argv: tuple[str, ...]
    runas_uid: int
    runas_gid: int
    shell: bool = False
    sudoedit: bool = False
    caller_uid: int = -1
    caller_user: str = ""


@dataclass(frozen=True, slots=True)
class SudoVerdict:
    """The answer: ``code`` is ``allowed``, ``unmanaged_allowed`` or a refusal code."""

    allowed: bool
    code: str
    message: str
    pattern: str | None = None


def _refuse(code: str, message: str) -> SudoVerdict:
    return SudoVerdict(False, code, message)


def decide(
    grant: SessionGrant | None,
    call: SudoCall,
    *,
    now: float,
    unmanaged: Unmanaged,
    fleet_member: bool,
    resolver: CommandResolver,
) -> SudoVerdict:
    """Allow or refuse ``call`` made from a session with ``grant`` (None: unmanaged).

    ``fleet_member``: the caller belongs to the group the agent's sudoers drop-in gives
    sudo to. That right exists for agent sessions only, so such a caller is refused
    outside them whatever ``unmanaged`` says.
    """
    if grant is None:
        if unmanaged == "deny":
            return _refuse(
                "sudo_unmanaged_denied",
                "sudo outside a session started by the fleet agent is denied on this server",
            )
        if fleet_member:
            return _refuse(
                "sudo_unmanaged_denied",
                "the fleet sudo group may use sudo only inside sessions of the fleet agent",
            )
        return SudoVerdict(True, "unmanaged_allowed", "not a fleet session: sudoers decides")
    if grant.ended:
        return _refuse("work_session_ended", f"work session {grant.work_session} has ended")
    if grant.expires_at is not None and now >= grant.expires_at:
        return _refuse("work_session_expired", f"work session {grant.work_session} has expired")
    if "sudo" not in grant.scopes:
        return _refuse(
            "work_session_scope_not_allowed",
            f"work session {grant.work_session} has no 'sudo' scope",
        )
    if call.sudoedit:
        return _refuse("sudo_edit_not_allowed", "sudoedit is not allowed in a fleet session")
    if call.shell:
        return _refuse("sudo_shell_not_allowed", "a root shell (sudo -s, sudo -i) is not allowed")
    if call.runas_uid != 0 or call.runas_gid != 0:
        return _refuse("sudo_runas_not_allowed", "sudo may only run commands as root here")
    return match_patterns(grant.patterns, call.command, call.argv[1:], resolver)


def match_patterns(
    patterns: Collection[str], command: str, args: Sequence[str], resolver: CommandResolver
) -> SudoVerdict:
    """Allowed by the first pattern that matches, else ``sudo_pattern_not_allowed``.

    A pattern that does not parse never matches (the control plane validates them at
    session creation; an old or forged one is simply inert).
    """
    text = first_match(patterns, command, args, resolver)
    if text is not None:
        return SudoVerdict(True, "allowed", f"allowed by pattern {text!r}", pattern=text)
    shown = " ".join((command, *args))[:200]
    shelly = next((a for a in args if has_shell_syntax(a)), None)
    if shelly is not None:
        return _refuse(
            "sudo_pattern_not_allowed",
            f"{shown!r}: the argument {shelly[:80]!r} contains shell syntax, which never matches",
        )
    return _refuse(
        "sudo_pattern_not_allowed",
        f"{shown!r} matches no sudo pattern of the work session",
    )
