"""Work-session helpers of agentctl: which session a gated command uses, the file that
remembers `work-session use`, and the request bodies. No network here.

Selection order for gated commands: the `--work-session` flag, then
`AGENTCTL_WORK_SESSION`, then the session stored by `work-session use`. The stored choice
belongs to one config file and one principal: it lives beside the config file
(`config.toml` -> `config.sessions.json`), keyed by control-plane URL and a fingerprint of
the token, so two users' configs in one directory never share it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fleetgate.agentctl.errors import CliError, UsageError
from fleetgate.agentctl.output import format_timestamp, truncate
from fleetgate.shared.atomic import atomic_write


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
    "source_label",
    "split_values",
    "state_key",
    "state_path",
    "sudo_policies",
    "timeline_rows",
]

ENV_WORK_SESSION = "AGENTCTL_WORK_SESSION"
SCOPES = ("command", "editor", "sudo", "tunnel", "webftp", "websh")
SOURCE_LABELS = {
    "flag": "--work-session",
    "env": ENV_WORK_SESSION,
    "use": "work-session use",
}


def state_path(config_path: Path) -> Path:
    """Where `work-session use` remembers the active session: beside the config file, named
    after it."""
    return config_path.with_name(f"{config_path.stem}.sessions.json")


def state_key(url: str | None, token: str | None) -> str | None:
    """The key of one principal on one control plane: the URL and a token fingerprint."""
    if url is None:
        return None
    if token is None:
        return url
    import hashlib  # ~10 ms: only when a stored selection is read or written

    return f"{url}#{hashlib.sha256(token.encode()).hexdigest()[:16]}"


def source_label(source: str) -> str:
    """How a selection source is named to people (`--work-session`, ...)."""
    return SOURCE_LABELS.get(source, source)


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
    """The session stored by `use` under the key `url` (see `state_key`)."""
    return None if url is None else _read(path).get(url)


def save_active(path: Path, url: str, session_id: str | None) -> None:
    """Store (or with `None` forget) the active session of key `url`, atomically, 0600."""
    data = _read(path)
    if session_id is None:
        data.pop(url, None)
    else:
        data[url] = session_id
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o600)


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
        else:
            # Commands carry `line`; sudo, websh, webftp and tunnel rows a `description`
            # (sudo rows also a `command_id`, null for a terminal's sudo). A denial shows
            # its code instead of the id.
            ref = item.get("code") if item.get("denied") else item.get("command_id")
            text = item.get("line") if kind == "command" else item.get("description")
            text = text or item.get("line") or item.get("description")
            what = "  ".join(str(part) for part in (ref, truncate(str(text or ""), 60)) if part)
        rows.append(
            [format_timestamp(item.get("timestamp")), kind, str(item.get("actor") or ""), what]
        )
    return rows


def create_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST body of `work-session create`, checked like the reference CLI does."""
    purpose = (args.purpose or "").strip()
    if not purpose:
        raise UsageError('--purpose is required: say why you need access (--purpose "...")')
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
