"""Real sudo (Debian's), mediated by the agent through the approval plugin, end to end.

A real control plane and agent; the plugin installed into this machine's /etc for the
module (and removed, sudo.conf restored byte for byte). The "session" is the process
session of a command the agent started for a work-session user: ``agentctl exec -u
<user> -- sudo ...``, so sudo inside it is attributed to that work session. The same
checks inside a websh session reuse ``tests/support/sudo.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.accounts import new_login
from tests.support.agent import AgentProcess, running_agent
from tests.support.agentctl import AgentctlRunner
from tests.support.controlplane import ControlPlaneProcess, running_control_plane
from tests.support.sudo import (
    installed_sudo_plugin,
    refusal_code,
    require_sudo,
    sudo_session_user,
    sudoers_rule,
)
from tests.support.users import CreatedUser, temporary_user
from tests.support.waiting import eventually_blocking


pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

SESSIONS = "/api/work-sessions/sessions/"
GROUP = "fleettest-sudo"
PATTERNS = ["id -u", "journalctl -u nginx *"]


class Stack:
    """The control plane, the agent, a superuser login with agentctl, a session user."""

    def __init__(
        self, cp: ControlPlaneProcess, agent: AgentProcess, user: CreatedUser, workdir: Path
    ) -> None:
        self.cp, self.agent, self.user = cp, agent, user
        _, self.login, self.token = new_login(cp, superuser=True)
        config = workdir / "agentctl.toml"
        config.write_text(f'url = "{cp.url}"\ntoken = "{self.token}"\n', encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
        env.update({"AGENTCTL_CONFIG": str(config), "PYTHONUNBUFFERED": "1"})
        self.ctl = AgentctlRunner(cp, env)

    def api(self) -> httpx.Client:
        return self.cp.client(self.token)

    def session(self, patterns: list[str] | None = None, **fields: Any) -> str:
        body: dict[str, Any] = {
            "description": "sudo test",
            "servers": [self.agent.name],
            "scopes": ["command", "sudo"],
            "duration": "1h",
        }
        patterns = PATTERNS if patterns is None else patterns
        if patterns:
            body["sudo_policies"] = [{"commands": patterns}]
        body.update(fields)
        with self.api() as api:
            created = api.post(SESSIONS, json=body)
        assert created.status_code == 201, created.text
        doc = created.json()
        assert doc["status"] == "active", doc
        return str(doc["id"])

    def exec(
        self, session: str, line: str, *, sudo: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``line`` as the session user (or elevated with ``sudo``) in ``session``."""
        who = [] if sudo else ["-u", self.user.name]
        flag = ["--sudo"] if sudo else []
        return self.ctl.run(
            "exec", *flag, "--work-session", session, *who, self.agent.name, "--", line
        )

    def timeline(self, session: str) -> list[dict[str, Any]]:
        with self.api() as api:
            got = api.get(f"{SESSIONS}{session}/timeline/", params={"page_size": 100})
        assert got.status_code == 200, got.text
        return list(got.json()["results"])

    def sudo_items(self, session: str, count: int) -> list[dict[str, Any]]:
        """The session's ``sudo`` timeline items, once ``count`` of them arrived."""

        def items() -> list[dict[str, Any]]:
            return [i for i in self.timeline(session) if i["type"] == "sudo"]

        eventually_blocking(lambda: len(items()) >= count, 30, f"{count} sudo timeline items")
        return items()

    def audit(self) -> list[dict[str, Any]]:
        path = self.agent.workdir / "logs" / "audit.log"
        lines = path.read_text(encoding="utf-8").splitlines()
        return [e for e in map(json.loads, lines) if e["event"] == "sudo.decision"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_sudo()
    root = tmp_path_factory.mktemp("sudo")
    with (
        running_control_plane(root / "cp") as cp,
        running_agent(cp, root / "agent", sections={"sudo": {"group": GROUP}}) as agent,
        installed_sudo_plugin(agent.config_path, root / "plugin"),
        sudo_session_user(GROUP) as user,
    ):
        yield Stack(cp, agent, user, root)


def refused(result: subprocess.CompletedProcess[str], code: str) -> None:
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert refusal_code(result.stdout) == code, (result.stdout, result.stderr)


# -- inside a session the agent started ----------------------------------------------------


def test_allowed_pattern_runs_as_root(stack: Stack) -> None:
    session = stack.session()
    done = stack.exec(session, "id -u; sudo -n id -u")
    assert (done.returncode, done.stdout) == (0, f"{stack.user.uid}\n0\n"), done.stderr
    items = stack.sudo_items(session, 1)
    assert items[0]["allowed"] is True
    assert items[0]["code"] == "allowed"
    assert items[0]["argv"] == ["id", "-u"]
    assert items[0]["user"] == stack.user.name
    assert items[0]["command_id"]
    decisions = [e for e in stack.audit() if e.get("work_session") == session]
    assert decisions[0]["allowed"] is True
    assert decisions[0]["command"] == "/usr/bin/id"


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("sudo -n whoami", "sudo_pattern_not_allowed"),  # a different command
        ("sudo -n id -u -n", "sudo_pattern_not_allowed"),  # extra arguments
        ("sudo -n id", "sudo_pattern_not_allowed"),  # missing arguments
        ("sudo -n sh -c 'id -u'", "sudo_pattern_not_allowed"),
        ("sudo -n env rm -f /tmp/fleet-sudo-test", "sudo_pattern_not_allowed"),
        ("sudo -n /usr/bin/../bin/rm -f /tmp/fleet-sudo-test", "sudo_pattern_not_allowed"),
        ("sudo -n journalctl -u nginx '; id'", "sudo_pattern_not_allowed"),  # shell syntax
        ("sudo -n -s", "sudo_shell_not_allowed"),
        ("sudo -n -i", "sudo_shell_not_allowed"),
        ("sudo -n -u nobody id -u", "sudo_runas_not_allowed"),
        ("sudo -n -e /etc/hostname", "sudo_edit_not_allowed"),
    ],
)
def test_refused(stack: Stack, line: str, code: str) -> None:
    session = stack.session()
    done = stack.exec(session, line)
    refused(done, code)
    items = stack.sudo_items(session, 1)
    assert [(i["allowed"], i["code"]) for i in items] == [(False, code)]
    assert any(e["code"] == code and e.get("work_session") == session for e in stack.audit())


def test_a_path_another_user_could_swap_never_matches(stack: Stack) -> None:
    # The user's own symlink to an allowed command: sudo would exec the link after the
    # decision, and the user could point it at a shell in between.
    session = stack.session()
    link = f"/tmp/fleet-sudo-link-{uuid.uuid4().hex}"
    done = stack.exec(session, f"ln -s /usr/bin/id {link} && sudo -n {link} -u; rm -f {link}")
    assert refusal_code(done.stdout) == "sudo_pattern_not_allowed", done
    allowed = stack.exec(session, "sudo -n /usr/bin/../bin/id -u")  # root's own path: fine
    assert (allowed.returncode, allowed.stdout) == (0, "0\n"), allowed


def test_pattern_with_shell_syntax_is_refused_at_creation(stack: Stack) -> None:
    with stack.api() as api:
        for pattern in ("id -u; rm -rf /", "id $(id)", "journalctl -u nginx | sh", "ls *.log"):
            body = {
                "description": "x",
                "servers": [stack.agent.name],
                "duration": "1h",
                "sudo_policies": [{"commands": [pattern]}],
            }
            got = api.post(SESSIONS, json=body)
            assert got.status_code == 400, got.text
            assert got.json()["code"] == "INVALID_REQUEST"
            assert "shell syntax" in got.json()["detail"]


def test_session_without_sudo_scope_is_refused(stack: Stack) -> None:
    session = stack.session(patterns=[], scopes=["command"])
    refused(stack.exec(session, "sudo -n id -u"), "work_session_scope_not_allowed")


def _wait_status(stack: Stack, session: str, status: str) -> None:
    """Wait for the session to reach ``status`` (the API's long poll, no polling period)."""
    deadline = time.monotonic() + 30
    with stack.api() as api:
        current = api.get(f"{SESSIONS}{session}/").json()["status"]
        while current != status:
            assert time.monotonic() < deadline, f"session never became {status}"
            params = {"status": current, "wait": 5}
            current = api.get(f"{SESSIONS}{session}/", params=params).json()["status"]


def _stopped_by(stack: Stack, session: str, end: Any) -> subprocess.CompletedProcess[str]:
    """Start a long command in ``session`` and call ``end()`` once it runs: agentctl's
    result once the command was stopped."""
    waiting = stack.ctl.popen(
        "exec",
        "--work-session",
        session,
        "-u",
        stack.user.name,
        stack.agent.name,
        "--",
        f"echo ready; sleep 1000; : {session}; sudo -n id -u",
    )
    try:
        assert waiting.stdout is not None
        first = waiting.stdout.readline()  # the command runs (streamed output)
        assert first == "ready\n", first
        end()
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    return subprocess.CompletedProcess(waiting.args, waiting.returncode, first + out, err)


def test_after_the_session_expires_its_command_is_stopped(stack: Stack) -> None:
    session = stack.session(duration="10s")
    done = _stopped_by(stack, session, lambda: _wait_status(stack, session, "expired"))
    assert done.returncode == 128 + 15, done  # SIGTERM to its process group
    assert f"its work session {session} ended (expired)" in done.stderr, done


def test_revoking_the_session_stops_its_command_at_once(stack: Stack) -> None:
    session = stack.session()

    def revoke() -> None:
        with stack.api() as api:
            got = api.post(f"{SESSIONS}{session}/revoke/", json={})
            assert got.status_code == 200, got.text

    done = _stopped_by(stack, session, revoke)
    assert done.returncode == 128 + 15, done
    assert f"its work session {session} ended (revoked)" in done.stderr, done
    assert done.stdout == "ready\n"  # the sudo after the sleep never ran
    with stack.api() as api:
        commands = api.get("/api/events/commands/", params={"search": session}).json()
    (command,) = commands["results"]
    assert (command["error_phase"], command["status"]["text"]) == ("stopped", "Stopped")


# -- elevation through the API -------------------------------------------------------------


def test_api_elevation_matches_the_patterns(stack: Stack) -> None:
    session = stack.session()
    ran = stack.exec(session, "id -u", sudo=True)
    assert (ran.returncode, ran.stdout) == (0, "0\n"), ran.stderr
    other = stack.exec(session, "id -un", sudo=True)
    assert other.returncode == 126, other
    api_decisions = [(e["line"], e["allowed"], e["code"]) for e in stack.audit() if e.get("via")]
    assert ("/usr/bin/id -u", True, "allowed") in api_decisions
    assert ("id -un", False, "sudo_pattern_not_allowed") in api_decisions
    with stack.api() as api:
        body = {"server": stack.agent.name, "line": "id -u; id", "sudo": True}
        got = api.post("/api/events/commands/", json={**body, "work_session": session})
        assert got.status_code == 400, got.text
        assert "shell syntax" in got.json()["detail"]
        token = stack.cp.client()  # a token principal is not elevated: it runs as root itself
        with token:
            got = token.post("/api/events/commands/", json=body)
            assert got.status_code == 400, got.text


def test_api_elevation_needs_the_sudo_scope(stack: Stack) -> None:
    session = stack.session(patterns=[], scopes=["command"])
    done = stack.ctl.run(
        "exec",
        "--output",
        "json",
        "--sudo",
        "--work-session",
        session,
        stack.agent.name,
        "--",
        "id",
        "-u",
    )
    assert done.returncode == 3, done
    assert json.loads(done.stderr)["error_code"] == "work_session_scope_not_allowed"


# -- outside agent sessions, and without the agent -----------------------------------------


def _local_sudo(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """sudo from a process session the agent did not start (as from an SSH login)."""
    return subprocess.run(
        ["runuser", "-u", user, "--", "sudo", "-n", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,
        check=False,
    )


def _restart_agent(stack: Stack, unmanaged: str) -> None:
    stack.agent.stop()
    text = stack.agent.config_path.read_text(encoding="utf-8")
    text = text.replace('unmanaged = "allow"\n', "").replace('unmanaged = "deny"\n', "")
    text = text.replace("[sudo]\n", f'[sudo]\nunmanaged = "{unmanaged}"\n')
    stack.agent.config_path.write_text(text, encoding="utf-8")
    stack.agent.start()


def test_unmanaged_sessions_follow_the_local_policy(stack: Stack) -> None:
    # The fleet group's right is for agent sessions only, whatever the policy.
    assert refusal_code(_local_sudo(stack.user.name, "id", "-u").stderr) == (
        "sudo_unmanaged_denied"
    )
    with temporary_user() as operator, sudoers_rule(operator.name, "(root) NOPASSWD: /usr/bin/id"):
        allowed = _local_sudo(operator.name, "id", "-u")  # "allow": sudoers decides
        assert (allowed.returncode, allowed.stdout) == (0, "0\n"), allowed.stderr
        try:
            _restart_agent(stack, "deny")
            denied = _local_sudo(operator.name, "id", "-u")
            assert denied.returncode != 0
            assert refusal_code(denied.stderr) == "sudo_unmanaged_denied", denied.stderr
        finally:
            _restart_agent(stack, "allow")
    codes = [e["code"] for e in stack.audit() if e.get("work_session") is None]
    assert "unmanaged_allowed" in codes
    assert "sudo_unmanaged_denied" in codes


def test_agent_down_fails_closed(stack: Stack) -> None:
    stack.agent.stop()
    try:
        done = _local_sudo(stack.user.name, "id", "-u")
        assert done.returncode != 0
        assert refusal_code(done.stderr) == "sudo_agent_unavailable", done.stderr
        # root itself is never mediated: the machine stays administrable.
        root = subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=30, check=False)
        assert root.returncode == 0, root.stderr
    finally:
        stack.agent.start()
