"""A command create before any I/O: its body, validation and the principal's part of
authorization (account, env denylist, token ACL). Pure: no I/O.

The route (:mod:`fleetgate.controlplane.api.commands`) then resolves the server, gates,
signs and persists in one transaction, and delivers.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

from pydantic import BaseModel, ConfigDict, ValidationError

from fleetgate.controlplane.acl import AclRefusal
from fleetgate.controlplane.auth import Principal
from fleetgate.controlplane.authz import acl_refused, server_account
from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.controlplane.errors import APIError, validation_detail
from fleetgate.controlplane.ids import new_uuid
from fleetgate.shared.envpolicy import denied_env_names
from fleetgate.shared.protocol import CommandRun, encode
from fleetgate.shared.protocol.limits import GRANT_MAX_BYTES, frame_problem
from fleetgate.shared.sudo_patterns import SudoPatternError, parse_line


__all__ = [
    "CommandCreateBody",
    "authorize_command",
    "check_env",
    "check_frame_size",
    "validate_command",
]


class CommandCreateBody(BaseModel):
    """``POST /api/events/commands/``; fields are checked again against ``CommandRun``."""

    model_config = ConfigDict(extra="ignore")
    server: str
    line: str
    shell: str = "system"
    username: str | None = None
    groupname: str | None = None
    env: dict[str, str] | None = None
    scheduled_at: datetime | None = None
    timeout: float | None = None
    work_session: str | None = None
    sudo: bool = False


def _invalid(detail: str, source: str | None) -> APIError:
    return APIError(400, "INVALID_COMMAND", detail, source)


def validate_command(body: CommandCreateBody, account: str | None = None) -> CommandRun:
    """Check a create against the wire model, so every stored command can be sent.

    ``account`` is the server account it runs as (default: ``username``, else root).

    Raises:
        APIError: 400 ``INVALID_COMMAND`` naming the field.
    """
    if not body.line.strip():
        raise _invalid("line: must not be empty", "line")
    if body.shell != "system":
        raise _invalid(f"shell: unknown shell {body.shell[:40]!r} (expected 'system')", "shell")
    if body.sudo:
        if (body.username or "root") != "root" or (body.groupname or "root") != "root":
            raise _invalid("sudo: an elevated command runs as root; omit username", "username")
        try:
            parse_line(body.line)
        except SudoPatternError as exc:
            raise _invalid(f"line: {exc}", "line") from None
    try:
        return CommandRun(  # noqa: S604 - "system" is the only shell; the agent runs it
            command_id=new_uuid(),
            shell="system",
            line=body.line,
            username=account or body.username or "root",
            groupname=body.groupname or None,
            env=body.env or {},
            timeout=body.timeout,
            sudo=body.sudo,
        )
    except ValidationError as exc:
        detail, source = validation_detail(exc.errors())
        raise _invalid(detail, source) from None


def check_env(env: Mapping[str, str], allowed: Collection[str]) -> None:
    """Refuse loader and interpreter variables (``shared.envpolicy``) unless allowed.

    Raises:
        APIError: 400 ``INVALID_COMMAND`` naming the first refused variable.
    """
    denied = denied_env_names(env, allowed)
    if denied:
        raise _invalid(
            f"env: {denied[0]} may not be set by a request (it changes which program runs "
            "or what it loads)",
            "env",
        )


def check_frame_size(run: CommandRun, max_message_bytes: int) -> None:
    """Refuse a command whose ``command.run`` frame (with the largest grant) would be
    larger than an agent accepts, so no stored command is one the agent refuses.

    Raises:
        APIError: 400 ``INVALID_COMMAND`` naming the limit.
    """
    size = len(encode(run).encode("utf-8", "surrogatepass")) + GRANT_MAX_BYTES
    problem = frame_problem(size, max_message_bytes)
    if problem is not None:
        raise _invalid(problem, "env" if run.env else "line")


def authorize_command(
    body: CommandCreateBody, principal: Principal, settings: ControlPlaneSettings
) -> CommandRun:
    """Validation and the principal's part of authorization, before any I/O.

    The account it runs as (``authz.server_account``; an elevated command runs as root
    through the session's sudo patterns), the env denylist, the frame size an agent
    accepts (``shared.protocol.limits``) and the token's ACL (line, env, account).

    Raises:
        APIError: 400 ``INVALID_COMMAND``; 403 for identity, ACL and gate refusals.
    """
    if body.sudo:
        run = validate_command(body)  # elevated: root, through the session's sudo patterns
        if not principal.gated:
            raise _invalid(
                "sudo: elevation is checked against a work session's sudo patterns; "
                "ungated tokens run commands as root directly",
                "sudo",
            )
    else:
        account = server_account(principal, body.username, body.groupname, what="a command")
        run = validate_command(body, account)
    check_env(run.env, settings.allowed_env)
    check_frame_size(run, settings.max_message_bytes)
    if principal.acl is not None:
        try:
            principal.acl.check_command(run.line, list(run.env), run.username)
        except AclRefusal as exc:
            raise acl_refused(exc.detail, exc.source) from None
    return run
