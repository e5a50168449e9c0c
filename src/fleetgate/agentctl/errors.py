"""Errors, exit codes and the diagnostics printed for them.

The exit code is agentctl's contract with scripts: 0 ok, 1 general failure, 2 usage,
3 work-session gate denied, 4 approval pending; `exec` passes the remote exit code through.
Everything here is pure (no I/O) so the mapping is unit-testable.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_GATE_DENIED = 3
EXIT_APPROVAL_PENDING = 4
EXIT_WORK_SESSION_ENDED = 6  # `create --wait` saw the request end (rejected, cancelled, ...)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

# Reasons for the seven gate codes of the work-session seed page, worded as the reference CLI does.
GATE_REASONS: dict[str, str] = {
    "work_session_required": "no work session selected for this shell",
    "work_session_not_usable": "session is no longer usable",
    "work_session_not_active": "selected session is not active",
    "work_session_expired": "selected session has expired",
    "work_session_revoked": "selected session was revoked",
    "work_session_scope_not_allowed": "session does not include this scope",
    "work_session_server_not_allowed": "target server is not in this session",
    "work_session_assignee_mismatch": "this session is assigned to another principal",
}

# The gate code that says a session has ended, by its final status (anything else ended:
# work_session_not_usable), as the control plane closes a session's channels.
SESSION_ENDED_CODES: dict[str, str] = {
    "expired": "work_session_expired",
    "revoked": "work_session_revoked",
    "completed": "work_session_completed",
}

# Refusals of the authorization model that, like a gate denial, a work session or a
# superuser can fix: they exit 3 too (docs/security.md).
IDENTITY_REASONS: dict[str, str] = {
    "IDENTITY_NOT_ALLOWED": "you run as your own server account; another user needs sudo",
    "SERVER_USERNAME_NOT_SET": "you have no server account yet",
}

# Operation (the API's `source`) -> the work-session scope that gates it.
OPERATION_SCOPES: dict[str, str] = {
    "command": "command",
    "exec": "command",
    "websh": "websh",
    "cp": "webftp",
    "webftp": "webftp",
    "edit": "webftp",
    "tunnel": "tunnel",
    "sudo": "sudo",
}


class AgentctlError(Exception):
    """Base of the errors main() turns into a message and an exit code."""

    exit_code = EXIT_FAILURE


class CliError(AgentctlError):
    """A failure explained by a plain message (`agentctl: <message>` on stderr)."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILURE, code: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.code = code


class UsageError(AgentctlError):
    """Bad command-line usage: exit 2, like argparse."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


class ControlPlaneError(AgentctlError):
    """An HTTP error answer of the control plane: `{"code", "detail", "source"?}`."""

    def __init__(self, status: int, code: str, detail: str, source: str | None = None) -> None:
        super().__init__(f"{detail} ({code})")
        self.status = status
        self.code = code
        self.detail = detail
        self.source = source

    @property
    def is_gate_denial(self) -> bool:
        """True for a 403 carrying one of the seed's `work_session_*` codes."""
        return self.status == 403 and self.code.lower().startswith("work_session_")


@dataclass(frozen=True)
class ErrorContext:
    """What the failing invocation was doing, to make the diagnostic actionable."""

    operation: str = ""
    server: str | None = None
    url: str | None = None
    auth_method: str | None = None
    work_session: str | None = None
    session: Mapping[str, Any] | None = None  # the selected session, when it could be read


@dataclass(frozen=True)
class Diagnostic:
    """How one error is reported: exit code, text lines (stderr) and the JSON shape."""

    exit_code: int
    lines: list[str]
    payload: dict[str, Any] = field(default_factory=dict)


def _action(command: str, description: str = "") -> dict[str, str]:
    return {"command": command, "description": description} if description else {"command": command}


def _duration(session: Mapping[str, Any]) -> str:
    """The length the session was requested for, as `--expires-in` takes it (`1h`, `90m`)."""
    try:
        start = datetime.fromisoformat(str(session["starts_at"]))
        end = datetime.fromisoformat(str(session["expires_at"]))
    except (KeyError, ValueError):
        return "1h"
    seconds = max(1, round((end - start).total_seconds()))
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def recreate_command(session: Mapping[str, Any]) -> str:
    """`work-session create` with the flags of `session` filled in (to replace it)."""
    scopes = ",".join(str(s) for s in session.get("scopes") or []) or "command"
    servers = ",".join(
        str(s.get("name") or s.get("id")) if isinstance(s, Mapping) else str(s)
        for s in session.get("servers") or []
    )
    words = ["agentctl", "work-session", "create", "--scope", scopes, "--server", servers]
    words += ["--expires-in", _duration(session)]
    words += ["--purpose", str(session.get("description") or "<intent>")]
    for policy in session.get("sudo_policies") or []:
        words += ["--sudo", ",".join(str(c) for c in policy.get("commands") or [])]
    if session.get("requester_type") == "agent":
        words += ["--requester-type", "agent"]
    return shlex.join(words)


def gate_next_actions(
    code: str, operation: str, server: str | None, session: Mapping[str, Any] | None = None
) -> list[dict[str, str]]:
    """The recovery steps of a gate denial, in the order of the reference CLI."""
    scope = OPERATION_SCOPES.get(operation, operation or "command")
    srv = server or "<SERVER>"
    create = (
        f"agentctl work-session create --scope {scope} --server {srv} --expires-in 1h "
        f'--purpose "<intent>"'
    )
    reuse = [
        _action(
            "agentctl work-session ls --status active",
            "find an active session; AI agents pass it with --work-session <ID>",
        ),
        _action("agentctl work-session use <ID>", "select it for this shell (humans)"),
        _action(f"{create} --use", "request a new session and select it"),
        _action(f"{create} --requester-type agent", "request a session for an AI agent"),
    ]
    new_only = reuse[2:]
    short = code.lower().removeprefix("work_session_")
    if short == "not_active":
        return [
            _action(
                "agentctl work-session current",
                "check its status and start time; if it is pending or approved, wait",
            ),
            *reuse,
        ]
    if short == "expired":
        # An expired session cannot be extended: request a new one like it.
        if session is None:
            return new_only
        if session.get("requester_type") == "agent":
            return [_action(recreate_command(session), "request the same session again")]
        again = f"{recreate_command(session)} --use"
        return [_action(again, "request the same session again and select it")]
    if short in ("scope_not_allowed", "server_not_allowed"):
        return new_only
    return reuse


def _api_next_actions(err: ControlPlaneError, ctx: ErrorContext) -> list[dict[str, str]]:
    code = err.code.upper()
    if err.status == 401:
        url = ctx.url or "URL"
        return [_action(f"agentctl login {url} --token <TOKEN>", "log in again")]
    if code in ("SERVER_NOT_FOUND", "SERVER_NOT_CONNECTED"):
        return [_action("agentctl server ls", "list servers and whether they are connected")]
    if code == "COMMAND_NOT_FOUND":
        return [_action("agentctl exec ls", "list recent commands")]
    server = ctx.server or "SERVER"
    if code == "IDENTITY_NOT_ALLOWED":
        return [
            _action(f"agentctl exec {server} -- CMD", "run as your own server account"),
            _action(
                f"agentctl exec --sudo {server} -- CMD",
                "run as root through a sudo pattern of your work session",
            ),
        ]
    if code == "SERVER_USERNAME_NOT_SET":
        return [_action("agentctl whoami", "ask a superuser to set your server username")]
    return []


def diagnose(err: AgentctlError, ctx: ErrorContext) -> Diagnostic:
    """Map an error to its exit code, text lines and JSON diagnostic (`--output json`)."""
    if isinstance(err, ControlPlaneError) and err.is_gate_denial:
        return _diagnose_gate(err, ctx)
    if isinstance(err, ControlPlaneError):
        actions = _api_next_actions(err, ctx)
        lines = [f"agentctl: {err.detail} ({err.code})"]
        if err.status == 401:
            lines.append(f"hint: run `{actions[0]['command']}` to store a valid token")
        context: dict[str, Any] = {"operation": ctx.operation, "status": err.status}
        if err.source:
            context["source"] = err.source
        if ctx.server:
            context["server"] = ctx.server
        exit_code = EXIT_FAILURE
        if err.status == 403 and err.code.upper() in IDENTITY_REASONS:
            exit_code = EXIT_GATE_DENIED
            lines.append(f"  reason  {IDENTITY_REASONS[err.code.upper()]}")
            lines += ["Next:"] + [f"  {a['command']}  # {a['description']}" for a in actions]
        return Diagnostic(
            exit_code,
            lines,
            _payload(exit_code, err.code, err.detail, context, actions),
        )
    if isinstance(err, UsageError):
        lines = [err.usage.rstrip(), f"agentctl: error: {err.message}"] if err.usage else []
        if not lines:
            lines = [f"agentctl: error: {err.message}"]
        return Diagnostic(EXIT_USAGE, lines, _payload(EXIT_USAGE, "usage", err.message, {}, []))
    code = err.code if isinstance(err, CliError) else "error"
    message = err.message if isinstance(err, CliError) else str(err)
    return Diagnostic(
        err.exit_code,
        [f"agentctl: {message}"],
        _payload(err.exit_code, code, message, {"operation": ctx.operation}, []),
    )


def _payload(
    exit_code: int,
    error_code: str,
    reason: str,
    context: dict[str, Any],
    next_actions: list[dict[str, str]],
) -> dict[str, Any]:
    return {
        "ok": False,
        "exit_code": exit_code,
        "error_code": error_code,
        "reason": reason,
        "context": context,
        "next_actions": next_actions,
    }


def _diagnose_gate(err: ControlPlaneError, ctx: ErrorContext) -> Diagnostic:
    operation = err.source or ctx.operation or "command"
    scope = OPERATION_SCOPES.get(operation, operation)
    reason = GATE_REASONS.get(err.code.lower(), err.detail or err.code)
    actions = gate_next_actions(err.code, operation, ctx.server, ctx.session)
    starts_at = None
    if ctx.session is not None and err.code.lower() == "work_session_not_active":
        # The seed: "check its start time": give it, and the status it is in.
        starts_at = str(ctx.session.get("starts_at") or "")
        reason = f"selected session is {ctx.session.get('status')}; it starts at {starts_at}"
    message = f"the {operation} operation requires an active work session on this authentication"
    rows = [
        ("auth", ctx.auth_method or ""),
        ("reason", reason),
        ("required scope", scope),
        ("target server", ctx.server or ""),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"agentctl: {message} ({err.code})"]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows if v]
    lines.append("Next:")
    cmd_width = max(len(a["command"]) for a in actions)
    lines += [
        f"  {a['command'].ljust(cmd_width)}  # {a['description']}"
        if "description" in a
        else f"  {a['command']}"
        for a in actions
    ]
    lines.append("Note: tokens a superuser issued, and service tokens, are not gated.")
    context: dict[str, Any] = {
        "operation": operation,
        "auth_method": ctx.auth_method,
        "required_scope": scope,
        "target_servers": [ctx.server] if ctx.server else [],
        "current_worksession": ctx.work_session,
    }
    if starts_at is not None:
        context["starts_at"] = starts_at
    payload = _payload(EXIT_GATE_DENIED, err.code, reason, context, actions)
    payload["message"] = message
    return Diagnostic(EXIT_GATE_DENIED, lines, payload)
