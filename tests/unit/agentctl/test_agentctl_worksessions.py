"""agentctl's pure work-session helpers: selection order, the `use` file, flag parsing."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path
from typing import Any

import pytest

from fleetgate.agentctl.errors import UsageError, recreate_command
from fleetgate.agentctl.worksessions import (
    ENV_WORK_SESSION,
    check_scopes,
    create_body,
    load_active,
    resolve_session,
    save_active,
    split_values,
    state_key,
    state_path,
    sudo_policies,
    timeline_rows,
)


def test_selection_order() -> None:
    env = {ENV_WORK_SESSION: "from-env"}
    assert resolve_session("from-flag", env, "stored") == ("from-flag", "flag")
    assert resolve_session(None, env, "stored") == ("from-env", "env")
    assert resolve_session(None, {}, "stored") == ("stored", "use")
    assert resolve_session(None, {ENV_WORK_SESSION: ""}, None) == (None, "none")


def test_use_file_is_per_control_plane_and_private(tmp_path: Path) -> None:
    path = state_path(tmp_path / "cfg" / "agentctl.toml")
    assert path.parent == tmp_path / "cfg"
    assert load_active(path, "http://a") is None
    save_active(path, "http://a", "s1")
    save_active(path, "http://b", "s2")
    assert (load_active(path, "http://a"), load_active(path, "http://b")) == ("s1", "s2")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    save_active(path, "http://a", None)
    save_active(path, "http://a", None)  # --unset is idempotent
    assert load_active(path, "http://a") is None
    assert load_active(path, "http://b") == "s2"
    assert load_active(path, None) is None


def test_flag_values() -> None:
    assert split_values(["command,websh", " sudo ", ","]) == ["command", "websh", "sudo"]
    assert split_values(None) == []
    assert check_scopes(["command", "editor"]) == ["command", "editor"]
    with pytest.raises(UsageError, match="Invalid --scope: shell"):
        check_scopes(["shell"])
    assert sudo_policies(["systemctl restart nginx, journalctl *", "ls"], "fix") == [
        {"commands": ["systemctl restart nginx", "journalctl *"], "reason": "fix"},
        {"commands": ["ls"], "reason": "fix"},
    ]
    with pytest.raises(UsageError):
        sudo_policies([" , "], None)


def _args(**overrides: object) -> argparse.Namespace:
    fields: dict[str, object] = {
        "purpose": " nginx fix ",
        "server": ["web-01,web-02"],
        "scope": None,
        "expires_in": "2h",
        "expires_at": None,
        "starts_at": None,
        "assignee": None,
        "requester_type": "user",
        "sudo": None,
        "sudo_reason": None,
        "use": False,
    }
    fields.update(overrides)
    return argparse.Namespace(**fields)


def test_create_body() -> None:
    assert create_body(_args()) == {
        "description": "nginx fix",
        "servers": ["web-01", "web-02"],
        "requester_type": "user",
        "duration": "2h",
    }
    body = create_body(
        _args(
            scope=["command"],
            sudo=["systemctl restart nginx"],
            expires_in=None,
            expires_at="2030-01-01T00:00:00Z",
            assignee="bob",
        )
    )
    assert body["scopes"] == ["command"]
    assert body["sudo_policies"] == [{"commands": ["systemctl restart nginx"], "reason": ""}]
    assert (body["expires_at"], body["assigned_user"]) == ("2030-01-01T00:00:00Z", "bob")


@pytest.mark.parametrize(
    "overrides",
    [
        {"purpose": "  "},
        {"server": None},
        {"expires_in": None},
        {"scope": [","]},
        {"requester_type": "agent", "use": True},
        {"requester_type": "agent"},  # the default scopes include websh
    ],
)
def test_create_usage_errors(overrides: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        create_body(_args(**overrides))


def test_use_file_is_named_after_its_config_and_keyed_by_principal(tmp_path: Path) -> None:
    one, two = state_path(tmp_path / "one.toml"), state_path(tmp_path / "two.toml")
    assert one != two  # two configs in one directory never share a selection
    assert one.parent == tmp_path
    alice, bob = state_key("http://a", "flt_alice"), state_key("http://a", "flt_bob")
    assert alice != bob
    assert alice is not None
    assert alice.startswith("http://a#")
    assert "flt_alice" not in alice  # a fingerprint, not the token
    assert state_key("http://a", None) == "http://a"
    assert state_key(None, "flt_alice") is None


def test_timeline_rows_fill_every_kind() -> None:
    items: list[dict[str, Any]] = [
        {"type": "command", "command_id": "c-1", "line": "echo hi", "denied": False},
        {"type": "command", "command_id": None, "line": "rm -rf /", "denied": True, "code": "x"},
        # A terminal's sudo: command_id null, a description (it once printed "None").
        {"type": "sudo", "command_id": None, "description": "sudo id -u", "denied": False},
        {"type": "websh", "description": "websh attach root@web-01"},
        {"type": "webftp", "description": "upload /tmp/f"},
        {"type": "tunnel", "description": "tunnel 127.0.0.1:8080"},
        {"type": "status_change", "from": "pending", "to": "active", "action": "approve"},
    ]
    details = [row[3] for row in timeline_rows(items)]
    assert details == [
        "c-1  echo hi",
        "x  rm -rf /",
        "sudo id -u",
        "websh attach root@web-01",
        "upload /tmp/f",
        "tunnel 127.0.0.1:8080",
        "pending -> active (approve)",
    ]


def test_recreate_command_fills_in_the_flags_of_the_session() -> None:
    session = {
        "scopes": ["command", "sudo"],
        "servers": [{"id": "s-1", "name": "web-01"}, {"id": "s-2", "name": "web-02"}],
        "description": "fix nginx",
        "starts_at": "2026-01-01T10:00:00Z",
        "expires_at": "2026-01-01T11:30:00Z",
        "sudo_policies": [{"commands": ["systemctl restart nginx"]}],
    }
    assert recreate_command(session) == (
        "agentctl work-session create --scope command,sudo --server web-01,web-02 "
        "--expires-in 90m --purpose 'fix nginx' --sudo 'systemctl restart nginx'"
    )
    two_hours = {**session, "expires_at": "2026-01-01T12:00:00Z", "sudo_policies": []}
    assert "--expires-in 2h " in recreate_command(two_hours)
    agents = {**two_hours, "requester_type": "agent"}
    assert recreate_command(agents).endswith(" --requester-type agent")
