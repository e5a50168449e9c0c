"""`agentctl work-session` and the gate, end to end: the CLI as a subprocess against the
real control plane with real agents (`web-01`, `web-02`), for `login`-token users."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.accounts import new_login
from tests.support.agent import running_agent
from tests.support.agentctl import RUN_TIMEOUT, AgentctlRunner
from tests.support.controlplane import ControlPlaneProcess, running_control_plane
from tests.support.users import CreatedUser, temporary_user


# Ordinary users act as a Linux account made for the module (`account`): creating it
# needs root, whichever test asks for it first.
pytestmark = pytest.mark.root

WEB1, WEB2 = "web-01", "web-02"
SESSIONS = "/api/work-sessions/sessions/"


@dataclass
class User(AgentctlRunner):
    """agentctl configured with one user's token, in a config directory of its own."""

    token: str
    username: str

    def json(self, *args: str, env: dict[str, str] | None = None) -> Any:
        result = self.run(*args, "--output", "json", env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def api(self) -> httpx.Client:
        return self.cp.client(self.token)

    def session(self, *scopes: str, server: str = WEB1, duration: str = "1h") -> str:
        """A session of this user, made through agentctl (auto-approved for superusers)."""
        doc = self.json(
            *("work-session", "create", "--purpose", "test", "--server", server),
            *("--scope", ",".join(scopes or ("command",)), "--expires-in", duration),
        )
        return str(doc["work_session_id"])


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    root = tmp_path_factory.mktemp("ws")
    with (
        running_control_plane(root / "cp") as cp,
        running_agent(cp, root / "a1", name=WEB1),
        running_agent(cp, root / "a2", name=WEB2),
    ):
        yield cp


@pytest.fixture(scope="module")
def account() -> Iterator[CreatedUser]:
    """The Linux account ordinary users are mapped to on the servers (their
    ``server_username``): their commands run as it."""
    with temporary_user() as created:
        yield created


def _user(
    cp: ControlPlaneProcess, tmp_path: Path, *, superuser: bool = False, mapped: str | None = None
) -> User:
    _, username, token = new_login(cp, superuser=superuser, server_username=mapped)
    config = tmp_path / f"{username}" / "agentctl.toml"
    config.parent.mkdir()
    config.write_text(f'url = "{cp.url}"\ntoken = "{token}"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
    env.update({"AGENTCTL_CONFIG": str(config), "PYTHONUNBUFFERED": "1"})
    return User(cp, env, token, username)


@pytest.fixture
def su(cp: ControlPlaneProcess, tmp_path: Path) -> User:
    """A superuser logged in with a password: gated, but approved automatically."""
    return _user(cp, tmp_path, superuser=True)


@pytest.fixture
def alice(cp: ControlPlaneProcess, tmp_path: Path, account: CreatedUser) -> User:
    """An ordinary user logged in with a password, mapped to ``account`` on servers."""
    return _user(cp, tmp_path, mapped=account.name)


@pytest.fixture
def admin(cp: ControlPlaneProcess, tmp_path: Path) -> User:
    """The superuser with an API token (not gated)."""
    config = tmp_path / "admin" / "agentctl.toml"
    config.parent.mkdir()
    config.write_text(f'url = "{cp.url}"\ntoken = "{cp.admin_token}"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
    env["AGENTCTL_CONFIG"] = str(config)
    return User(cp, env, cp.admin_token, "admin")


def denied(result: subprocess.CompletedProcess[str], code: str) -> dict[str, Any]:
    """Assert a gate denial: exit 3 and the JSON diagnostic on stderr."""
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    diagnostic: dict[str, Any] = json.loads(result.stderr)
    assert diagnostic["error_code"] == code
    assert diagnostic["reason"]
    assert diagnostic["next_actions"]
    assert diagnostic["context"]["required_scope"] == "command"
    assert diagnostic["context"]["auth_method"] == "login"
    return diagnostic


def exec_json(
    user: User, *args: str, server: str = WEB1, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return user.run("exec", "--output", "json", *args, server, "--", "echo", "ok", env=env)


# -- the recommended workflow ---------------------------------------------------------


def test_create_use_then_exec_is_recorded_on_the_timeline(su: User) -> None:
    me = su.json("whoami")
    assert me["work_session_required"] is True
    created = su.run(
        *("work-session", "create", "--purpose", "nginx fix", "--scope", "command,websh"),
        *("--server", WEB1, "--expires-in", "2h", "--sudo", "systemctl restart nginx"),
        "--wait",
        "--use",
    )
    assert created.returncode == 0, created.stderr
    current = su.json("work-session", "current")
    assert current["status"] == "active"
    assert current["scopes"] == ["websh", "command", "sudo"]
    assert current["sudo_policies"][0]["commands"] == ["systemctl restart nginx"]
    ran = su.run("exec", WEB1, "--", "echo", "gated-ok")
    assert (ran.returncode, ran.stdout) == (0, "gated-ok\n"), ran.stderr
    items = su.json("work-session", "timeline", current["id"])
    commands = [i for i in items if i["type"] == "command"]
    assert len(commands) == 1
    assert commands[0]["line"] == "echo gated-ok"
    assert commands[0]["denied"] is False
    with su.api() as api:
        path = f"/api/events/commands/{commands[0]['command_id']}/"
        command = api.get(path, headers={"X-Work-Session": current["id"]}).json()
        # Reading a command's output is gated too (the seed: "exec (including exec logs)").
        assert api.get(path).json()["code"] == "work_session_required"
    assert command["line"] == "echo gated-ok"
    listed = su.run("work-session", "ls")
    assert any(
        line.startswith("*") and current["id"] in line for line in listed.stdout.splitlines()
    )
    unset = su.run("work-session", "use", "--unset")
    assert unset.returncode == 0
    assert su.json("work-session", "current") is None
    denied(exec_json(su), "work_session_required")


def test_wait_returns_when_another_principal_approves(alice: User, admin: User) -> None:
    waiting = alice.popen(
        *("work-session", "create", "--purpose", "deploy", "--scope", "command"),
        *("--server", WEB1, "--expires-in", "1h", "--wait", "--use", "--output", "json"),
    )
    try:
        assert waiting.stderr is not None
        line = waiting.stderr.readline()  # printed once the request exists
        assert "Waiting for approval" in line, line
        pending = admin.json("work-session", "ls", "--status", "pending")
        mine = [s for s in pending if s["assigned_user"]["name"] == alice.username]
        assert len(mine) == 1
        approved_at = time.monotonic()
        admin.json("work-session", "approve", mine[0]["id"])
        out, err = waiting.communicate(timeout=RUN_TIMEOUT)
        assert waiting.returncode == 0, err
        assert time.monotonic() - approved_at < 10  # woken by the change, not a poll period
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    doc = json.loads(out)
    assert doc["status"] == "active"
    assert doc["active_worksession"] == mine[0]["id"]
    ran = alice.run("exec", WEB1, "--", "echo", "approved")
    assert (ran.returncode, ran.stdout) == (0, "approved\n"), ran.stderr


@pytest.mark.root
def test_a_login_user_runs_as_their_own_account_and_never_as_root(
    alice: User, admin: User, account: CreatedUser, tmp_path: Path
) -> None:
    """Issue 14 finding 4, end to end: ``create --wait`` then ``exec`` runs as the user's
    mapped account; ``exec -u root`` without a matching sudo pattern is refused (exit 3)
    and nothing runs."""
    waiting = alice.popen(
        *("work-session", "create", "--purpose", "logs", "--scope", "command,sudo"),
        *("--server", WEB1, "--expires-in", "1h", "--sudo", "systemctl status *"),
        *("--wait", "--use", "--output", "json"),
    )
    try:
        assert waiting.stderr is not None
        assert "Waiting for approval" in waiting.stderr.readline()
        pending = admin.json("work-session", "ls", "--status", "pending")
        mine = [s for s in pending if s["assigned_user"]["name"] == alice.username]
        admin.json("work-session", "approve", mine[0]["id"])
        _out, err = waiting.communicate(timeout=RUN_TIMEOUT)
        assert waiting.returncode == 0, err
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    ran = alice.run("exec", WEB1, "--", "id", "-un")
    assert (ran.returncode, ran.stdout) == (0, f"{account.name}\n"), ran.stderr
    marker = tmp_path / "ran-as-root"
    refused = alice.run("exec", "-u", "root", WEB1, "--", "touch", str(marker))
    assert refused.returncode == 3, (refused.stdout, refused.stderr)
    assert refused.stdout == ""
    assert "IDENTITY_NOT_ALLOWED" in refused.stderr
    assert "sudo" in refused.stderr  # the diagnostic says how root is reached
    as_json = alice.run("exec", "--output", "json", "-u", "root", WEB1, "--", "id")
    diagnostic = json.loads(as_json.stderr)
    assert (as_json.returncode, diagnostic["error_code"]) == (3, "IDENTITY_NOT_ALLOWED")
    # Root through sudo: only a command a pattern of the session allows.
    elevated = alice.run("exec", "--sudo", WEB1, "--", "touch", str(marker))
    assert elevated.returncode != 0, elevated.stdout
    assert not marker.exists()
    with admin.api() as api:
        rows = api.get("/api/events/commands/", params={"page_size": 100}).json()["results"]
    mine = [r for r in rows if "ran-as-root" in r["line"]]
    # Only the elevated attempt exists (the -u root ones were never created), and it
    # ran as nobody: the agent refused it against the sudo patterns.
    assert [(r["sudo"], r["success"]) for r in mine] == [(True, False)]


def test_pending_without_wait_exits_4(alice: User) -> None:
    result = alice.run(
        *("work-session", "create", "--purpose", "x", "--server", WEB1, "--expires-in", "1h"),
        "--output",
        "json",
    )
    assert result.returncode == 4, result.stderr
    assert json.loads(result.stdout)["status"] == "pending_approval"


# -- the seven gate codes --------------------------------------------------------------


def test_required(alice: User) -> None:
    diagnostic = denied(exec_json(alice), "work_session_required")
    assert diagnostic["context"]["target_servers"] == [WEB1]
    assert diagnostic["context"]["current_worksession"] is None
    text = alice.run("exec", WEB1, "--", "true")
    assert text.returncode == 3
    assert "Next:" in text.stderr
    assert "no work session selected for this shell" in text.stderr


def test_not_usable(su: User) -> None:
    denied(exec_json(su, "--work-session", str(uuid.uuid4())), "work_session_not_usable")
    session = su.session()
    assert su.run("work-session", "complete", session).returncode == 0
    diagnostic = denied(exec_json(su, "--work-session", session), "work_session_not_usable")
    assert diagnostic["context"]["current_worksession"] == session


def test_not_active(alice: User) -> None:
    result = alice.run(
        *("work-session", "create", "--purpose", "x", "--server", WEB1, "--expires-in", "1h"),
        "--output",
        "json",
    )
    pending = json.loads(result.stdout)["work_session_id"]
    diagnostic = denied(
        exec_json(alice, env={"AGENTCTL_WORK_SESSION": pending}), "work_session_not_active"
    )
    assert diagnostic["next_actions"][0]["command"] == "agentctl work-session current"
    timeline = alice.json("work-session", "timeline", pending)
    assert timeline[-1]["denied"] is True
    assert timeline[-1]["code"] == "work_session_not_active"


def test_expired(su: User) -> None:
    session = su.session(duration="1s")
    ends = datetime.fromisoformat(su.json("work-session", "describe", session)["expires_at"])
    time.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 0.05)
    diagnostic = denied(exec_json(su, "--work-session", session), "work_session_expired")
    # An expired session cannot be extended: the way out is the same request again.
    assert diagnostic["next_actions"][0]["command"].startswith("agentctl work-session create")


def test_scope_not_allowed(su: User) -> None:
    session = su.session("websh")
    denied(exec_json(su, "--work-session", session), "work_session_scope_not_allowed")


def test_server_not_allowed(su: User) -> None:
    session = su.session(server=WEB2)
    denied(exec_json(su, "--work-session", session), "work_session_server_not_allowed")
    ok = exec_json(su, "--work-session", session, server=WEB2)
    assert ok.returncode == 0, ok.stderr


def test_assignee_mismatch(su: User, alice: User) -> None:
    theirs = su.session()
    denied(exec_json(alice, "--work-session", theirs), "work_session_assignee_mismatch")


def test_exec_logs_needs_the_session_too(su: User) -> None:
    session = su.session()
    ran = su.run(
        "exec",
        "--output",
        "json",
        "--work-session",
        session,
        "--detach",
        WEB1,
        "--",
        "echo",
        "logged",
    )
    assert ran.returncode == 0, ran.stderr
    command_id = json.loads(ran.stdout)["id"]
    denied(su.run("exec", "logs", command_id, "--output", "json"), "work_session_required")
    other = su.session("websh")
    denied(
        su.run("exec", "logs", command_id, "--work-session", other, "--output", "json"),
        "work_session_scope_not_allowed",
    )
    shown = su.run("exec", "logs", command_id, "--work-session", session)
    deadline = time.monotonic() + RUN_TIMEOUT
    while shown.returncode == 0 and shown.stdout != "logged\n" and time.monotonic() < deadline:
        shown = su.run("exec", "logs", command_id, "--work-session", session)
    assert (shown.returncode, shown.stdout) == (0, "logged\n"), shown.stderr


def test_token_authentication_bypasses_the_gate(admin: User) -> None:
    ran = admin.run("exec", WEB1, "--", "echo", "token")
    assert (ran.returncode, ran.stdout) == (0, "token\n")


def test_selection_order_flag_then_env_then_use(su: User) -> None:
    good, wrong_scope = su.session(), su.session("websh")
    assert su.run("work-session", "use", good).returncode == 0
    assert exec_json(su).returncode == 0  # the stored one
    env = {"AGENTCTL_WORK_SESSION": wrong_scope}
    denied(exec_json(su, env=env), "work_session_scope_not_allowed")  # env beats use
    assert exec_json(su, "--work-session", good, env=env).returncode == 0  # flag beats env


# -- the other verbs --------------------------------------------------------------------


def test_lifecycle_verbs(alice: User, admin: User) -> None:
    create = alice.run(
        *("work-session", "create", "--purpose", "x", "--server", WEB1, "--expires-in", "1h"),
        *("--scope", "command,sudo", "--starts-at", "2099-01-01T00:00:00Z"),
    )
    assert create.returncode == 4, create.stderr  # pending
    session = create.stdout.strip()
    refused = alice.run("work-session", "approve", session, "--output", "json")
    assert refused.returncode == 1
    assert json.loads(refused.stderr)["error_code"] == "PERMISSION_DENIED"
    assert alice.run("work-session", "update", session, "--sudo", "ls").returncode == 1
    assert admin.json("work-session", "approve", session)["status"] == "approved"
    use = alice.run("work-session", "use", session)
    assert use.returncode == 1
    assert "not active" in use.stderr
    assert alice.json("work-session", "activate", session)["status"] == "active"
    # Approved means frozen: the user's own extend and update need approval again.
    extended = alice.json("work-session", "extend", session, "--expires-in", "30m")
    assert extended["status"] == "pending"
    assert admin.json("work-session", "approve", session)["status"] == "approved"
    assert alice.json("work-session", "activate", session)["status"] == "active"
    updated = alice.json("work-session", "update", session, "--sudo", "systemctl status *")
    assert [p["commands"] for p in updated["work_session"]["sudo_policies"]] == [
        ["systemctl status *"]
    ]
    assert updated["work_session"]["status"] == "pending"
    assert admin.json("work-session", "approve", session)["status"] == "approved"
    assert alice.json("work-session", "activate", session)["status"] == "active"
    described = alice.run("work-session", "describe", session)
    assert "systemctl status *" in described.stdout
    illegal = alice.run("work-session", "cancel", session, "--output", "json")
    assert illegal.returncode == 1
    error = json.loads(illegal.stderr)
    assert error["error_code"] == "WORK_SESSION_INVALID_TRANSITION"
    assert "current state: active" in error["reason"]
    assert admin.json("session", "revoke", session)["status"] == "revoked"
    kinds = [i.get("action") or i["type"] for i in alice.json("session", "timeline", session)]
    assert kinds == [
        *("created", "approve", "activate"),
        *("amend", "extend", "approve", "activate"),
        *("amend", "update", "approve", "activate"),
        "revoke",
    ]
    other = alice.run(
        *("session", "create", "--purpose", "x", "--server", WEB1, "--expires-in", "1h")
    )
    assert alice.json("session", "cancel", other.stdout.strip())["status"] == "cancelled"
    rejected = alice.run(
        *("session", "create", "--purpose", "x", "--server", WEB1, "--expires-in", "1h")
    )
    assert admin.json("session", "reject", rejected.stdout.strip())["status"] == "rejected"
