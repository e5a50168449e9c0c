"""File transfer is gated by the work session's ``webftp`` scope, and recorded on it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.files.conftest import SERVER, FilesStack
from tests.support.accounts import new_login
from tests.support.users import CreatedUser


def login(stack: FilesStack, tmp_path: Path) -> FilesStack:
    """agentctl as a superuser logged in with a password (gated, auto-approved)."""
    _, _username, token = new_login(stack.cp, superuser=True)
    config = tmp_path / "login.toml"
    config.write_text(f'url = "{stack.cp.url}"\ntoken = "{token}"\n', encoding="utf-8")
    return FilesStack(stack.cp, {**stack.env, "AGENTCTL_CONFIG": str(config)}, stack.agent)


def session(cli: FilesStack, scope: str) -> str:
    made = cli.run(
        *("work-session", "create", "--purpose", "files", "--server", SERVER),
        *("--scope", scope, "--expires-in", "1h", "--output", "json"),
    )
    assert made.returncode == 0, made.stderr
    return str(json.loads(made.stdout)["work_session_id"])


@pytest.mark.root
def test_cp_needs_a_session_with_webftp(
    stack: FilesStack, area: Path, user: CreatedUser, tmp_path: Path
) -> None:
    cli = login(stack, tmp_path)
    local = tmp_path / "notes.txt"
    local.write_text("hello")
    home = area / "home"
    home.mkdir()
    os.chown(home, user.uid, user.gid)
    target = f"{SERVER}:{home}/"

    refused = cli.cp_(str(local), target, "-u", user.name)
    assert refused.returncode == 3, refused.stderr
    assert json.loads(refused.stderr)["error_code"] == "work_session_required"

    commands_only = session(cli, "command")
    refused = cli.cp_(str(local), target, "-u", user.name, "--work-session", commands_only)
    assert refused.returncode == 3, refused.stderr
    diagnostic = json.loads(refused.stderr)
    assert diagnostic["error_code"] == "work_session_scope_not_allowed"
    assert not (home / "notes.txt").exists()

    files = session(cli, "webftp")
    done = cli.cp_(str(local), target, "-u", user.name, "--work-session", files)
    assert done.returncode == 0, done.stderr
    assert (home / "notes.txt").read_text() == "hello"
    with cli.cp.client() as api:
        timeline = api.get(f"/api/work-sessions/sessions/{files}/timeline/").json()
    items = timeline["results"] if isinstance(timeline, dict) else timeline
    assert f"upload {home}/ as {user.name}" in json.dumps(items)
