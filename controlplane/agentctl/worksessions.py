"""Work-session helpers of agentctl: which session a gated command uses, the file that
remembers `work-session use`, and the request bodies. No network here.

Selection order for gated commands: the `--work-session` flag, then
`AGENTCTL_WORK_SESSION`, then the session stored by `work-session use` for this control
plane (`work-sessions.json` beside the config file, a map from control-plane URL to id).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from controlplane.agentctl.errors import CliError, UsageError


__all__ = [
    "ENV_WORK_SESSION",
    "SCOPES",
    "load_active",
    "resolve_session",
    "save_active",
    "split_values",
    "state_path",
    "sudo_policies",
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
