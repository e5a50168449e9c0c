"""Work-session helpers of agentctl: which session a gated command uses, the file that
remembers `work-session use`, and the request bodies. No network here.

Selection order for gated commands: the `--work-session` flag, then
`AGENTCTL_WORK_SESSION`, then the session stored by `work-session use` for this control
plane (`work-sessions.json` beside the config file, a map from control-plane URL to id).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fleetgate.agentctl.errors import CliError, UsageError
from fleetgate.agentctl.output import format_timestamp, truncate


__all__ = [
    "ENV_WORK_SESSION",
    "SCOPES",
    "check_scopes",
    "create_body",
    "describe_rows",
    "load_active",
    "resolve_session",
    "save_active",
    "server_names",
    "split_values",
    "state_path",
    "sudo_policies",
    "timeline_rows",
]

ENV_WORK_SESSION = "AGENTCTL_WORK_SESSION"
SCOPES = ("command", "editor", "sudo", "tunnel", "webftp", "websh")
STATE_FILE = "work-sessions.json"


def state_path(config_path: Path) -> Path:
    """Where `work-session use` remembers the active session: beside the config file."""
    return config_path.parent / STATE_FILE


def _read(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}


def load_active(path: Path, url: str | None) -> str | None:
    """The session stored by `use` for the control plane at `url`."""
    return None if url is None else _read(path).get(url)


def save_active(path: Path, url: str, session_id: str | None) -> None:
    """Store (or with `None` forget) the active session of `url`, atomically, mode 0600."""
    data = _read(path)
    if session_id is None:
        data.pop(url, None)
    else:
        data[url] = session_id
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def resolve_session(
    flag: str | None, env: Mapping[str, str], stored: str | None
) -> tuple[str | None, str]:
    """The session a gated command uses and where it came from (`flag`, `env`, `use`)."""
    if flag:
        return flag, "flag"
    if env.get(ENV_WORK_SESSION):
        return env[ENV_WORK_SESSION], "env"
    if stored:
        return stored, "use"
    return None, "none"


def split_values(values: Iterable[str] | None) -> list[str]:
    """Repeatable, comma-separated flag values as one list (empty parts dropped)."""
    out: list[str] = []
    for value in values or ():
        out += [part.strip() for part in value.split(",") if part.strip()]
    return out


def check_scopes(scopes: Sequence[str]) -> list[str]:
    """Validate `--scope` values like the reference CLI does."""
    for scope in scopes:
        if scope not in SCOPES:
            raise UsageError(f"Invalid --scope: {scope}. valid: {', '.join(SCOPES)}")
    return list(scopes)


def sudo_policies(values: Iterable[str] | None, reason: str | None) -> list[dict[str, Any]]:
    """Each `--sudo "p1,p2"` is one policy of comma-separated patterns."""
    policies = []
    for value in values or ():
        commands = [p.strip() for p in value.split(",") if p.strip()]
        if not commands:
            raise UsageError("--sudo needs at least one command pattern")
        policies.append({"commands": commands, "reason": reason or ""})
    return policies


def server_names(session: Mapping[str, Any]) -> str:
    """The session's server names, comma-separated."""
    return ",".join(str(s.get("name") or s.get("id")) for s in session.get("servers") or [])


def describe_rows(session: Mapping[str, Any]) -> list[list[str]]:
    """Key/value rows of `describe`."""
    assignee = session.get("assigned_user") or {}
    rows: list[list[Any]] = [
        ["id", session.get("id")],
        ["status", session.get("status")],
        ["purpose", session.get("description")],
        ["servers", server_names(session)],
        ["scopes", ",".join(session.get("scopes") or [])],
        ["assignee", assignee.get("name", "")],
        ["starts at", format_timestamp(session.get("starts_at"))],
        ["expires at", format_timestamp(session.get("expires_at"))],
    ]
    rows += [
        ["sudo", ", ".join(policy.get("commands") or [])]
        for policy in session.get("sudo_policies") or []
    ]
    return [[str(k), str(v or "")] for k, v in rows]


def timeline_rows(items: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Table rows of `timeline`."""
    rows = []
    for item in items:
        kind = str(item.get("type"))
        if kind == "status_change":
            what = f"{item.get('from')} -> {item.get('to')} ({item.get('action')})"
        elif "command_id" in item:
            ref = item.get("code") if item.get("denied") else item.get("command_id")
            what = f"{ref}  {truncate(str(item.get('line') or ''), 50)}"
        else:
            what = ""
        rows.append(
            [format_timestamp(item.get("timestamp")), kind, str(item.get("actor") or ""), what]
        )
    return rows


def create_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST body of `work-session create`, checked like the reference CLI does."""
    purpose = (args.purpose or "").strip()
    if not purpose:
        raise UsageError("Non-interactive mode requires --purpose.")
    servers = split_values(args.server)
    if not servers:
        raise UsageError("--server is required")
    if not args.expires_in and not args.expires_at:
        raise UsageError("one of --expires-in and --expires-at is required")
    if args.requester_type == "agent" and args.use:
        raise UsageError("--use cannot be combined with --requester-type=agent")
    body: dict[str, Any] = {
        "description": purpose,
        "servers": servers,
        "requester_type": args.requester_type,
    }
    if args.scope is not None:
        scopes = check_scopes(split_values(args.scope))
        if not scopes:
            raise UsageError("--scope must contain at least one valid scope.")
        body["scopes"] = scopes
    if args.requester_type == "agent" and "websh" in body.get("scopes", ["websh"]):
        raise UsageError("websh is not allowed for --requester-type=agent; choose --scope")
    if args.expires_in:
        body["duration"] = args.expires_in
    else:
        body["expires_at"] = args.expires_at
    if args.starts_at:
        body["starts_at"] = args.starts_at
    if args.assignee:
        body["assigned_user"] = args.assignee
    policies = sudo_policies(args.sudo, args.sudo_reason)
    if policies:
        body["sudo_policies"] = policies
    return body
