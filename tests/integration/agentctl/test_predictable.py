"""Issue 15, "behaviour that surprised a new user": each numbered item, with agentctl run
as a subprocess against a real control plane and a real agent (`web-01`, which allows
tunnels), as the users the item is about (API token, login superuser, login user)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.accounts import new_login
from tests.support.agent import running_agent
from tests.support.agentctl import RUN_TIMEOUT, AgentctlRunner
from tests.support.controlplane import REPO_ROOT, ControlPlaneProcess, running_control_plane
from tests.support.tunnel import agentctl_tunnel, free_port
from tests.support.users import temporary_user


WEB1 = "web-01"
SESSIONS = "/api/work-sessions/sessions/"
TERMINALS = "/api/websh/terminals/"


@dataclass
class User(AgentctlRunner):
    """agentctl with one principal's token, in a config file of its own."""

    token: str
    username: str
    config: Path

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = self.run(*args, env=env)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def json(self, *args: str, env: dict[str, str] | None = None) -> Any:
        return json.loads(self.ok(*args, "--output", "json", env=env))

    def session(self, *scopes: str, duration: str = "1h", **extra: str) -> str:
        """A session of this (superuser) user, auto-approved and active."""
        flags = [w for k, v in extra.items() for w in (f"--{k.replace('_', '-')}", v)]
        doc = self.json(
            *("work-session", "create", "--purpose", "test", "--server", WEB1),
            *("--scope", ",".join(scopes or ("command",)), "--expires-in", duration, *flags),
        )
        return str(doc["work_session_id"])


def base_env(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
    env.update({"AGENTCTL_CONFIG": str(config), "PYTHONUNBUFFERED": "1", "TERM": "xterm"})
    return env


def make_user(cp: ControlPlaneProcess, config: Path, token: str, username: str) -> User:
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'url = "{cp.url}"\ntoken = "{token}"\n', encoding="utf-8")
    return User(cp, base_env(config), token, username, config)


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    root = tmp_path_factory.mktemp("predictable")
    sections: dict[str, dict[str, Any]] = {
        "tunnel": {"enabled": True, "allowed_ports": ["1024-65535"]},
        "websh": {"hangup_grace": 1.0},
    }
    with (
        running_control_plane(root / "cp") as cp,
        running_agent(cp, root / "agent", name=WEB1, sections=sections),
    ):
        yield cp


def login_user(cp: ControlPlaneProcess, tmp_path: Path, *, superuser: bool = False) -> User:
    _, username, token = new_login(cp, superuser=superuser)
    return make_user(cp, tmp_path / username / "config.toml", token, username)


@pytest.fixture
def su(cp: ControlPlaneProcess, tmp_path: Path) -> User:
    """A superuser logged in with a password: gated, auto-approved."""
    return login_user(cp, tmp_path, superuser=True)


@pytest.fixture
def alice(cp: ControlPlaneProcess, tmp_path: Path) -> User:
    """An ordinary user logged in with a password."""
    return login_user(cp, tmp_path)


@pytest.fixture
def admin(cp: ControlPlaneProcess, tmp_path: Path) -> User:
    """The superuser with an API token (not gated)."""
    return make_user(cp, tmp_path / "admin" / "config.toml", cp.admin_token, "admin")


def one_json_object(text: str) -> dict[str, Any]:
    """stderr with `--output json`: exactly one JSON object on one line."""
    lines = text.splitlines()
    assert len(lines) == 1, text
    value = json.loads(lines[0])
    assert isinstance(value, dict)
    return value


# -- 1. an unreachable control plane ----------------------------------------------------


def offline(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """agentctl run with `env` (a config whose control plane does not listen)."""
    return subprocess.run(
        [sys.executable, "-m", "fleetgate.agentctl", *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_1_unreachable_control_plane_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = tmp_path / "config.toml"
        config.write_text(f'url = "{url}"\ntoken = "flt_x"\n', encoding="utf-8")
        env = base_env(config)
        local = tmp_path / "f.txt"
        local.write_text("data")
        commands = [
            ("whoami",),
            ("server", "ls"),
            ("exec", WEB1, "--", "true"),
            ("exec", "logs", str(uuid.uuid4())),
            ("websh", WEB1, "uptime"),
            ("cp", str(local), f"{WEB1}:/tmp/x"),
            ("cp", "-r", str(tmp_path), f"{WEB1}:/tmp/x"),
            ("cp", f"{WEB1}:/etc/hostname", str(tmp_path / "down")),
            ("work-session", "ls"),
            ("tunnel", WEB1, "-l", str(free_port()), "-r", "8080"),
        ]
        for command in commands:
            started = time.monotonic()
            text = offline(env, *command)
            assert time.monotonic() - started < 10, command  # no retrying what never connected
            assert text.returncode == 1, (command, text.stderr)
            assert re.fullmatch(rf"agentctl: cannot reach {url}: .+\n", text.stderr), (
                command,
                text.stderr,
            )
            assert text.stdout == ""
            as_json = offline(env, "--output", "json", *command)
            assert as_json.returncode == 1, (command, as_json.stderr)
            diagnostic = one_json_object(as_json.stderr)
            assert diagnostic["error_code"] == "CONNECTION_FAILED", command
            assert diagnostic["reason"].startswith(f"cannot reach {url}: ")


# -- 2. whoami names the session and where the choice came from -------------------------


def test_2_whoami_shows_the_active_session_and_its_source(su: User) -> None:
    assert su.json("whoami")["active_work_session"] is None
    assert "Work session:  none" in su.ok("whoami")
    chosen, other, third = su.session(), su.session(), su.session()
    su.ok("work-session", "use", chosen)
    doc = su.json("whoami")
    assert doc["active_work_session"] == {
        "id": chosen,
        "source": "use",
        "status": "active",
        "used": True,
    }
    assert f"Work session:  {chosen} (from work-session use)" in su.ok("whoami")
    env = {"AGENTCTL_WORK_SESSION": other}
    assert su.json("whoami", env=env)["active_work_session"]["source"] == "env"
    assert f"{other} (from AGENTCTL_WORK_SESSION)" in su.ok("whoami", env=env)
    flagged = su.json("whoami", "--work-session", third, env=env)["active_work_session"]
    assert (flagged["id"], flagged["source"]) == (third, "flag")
    su.ok("work-session", "complete", third)  # a chosen session that ended says so
    assert f"{third} (from --work-session); it is completed" in su.ok(
        "whoami", "--work-session", third
    )


# -- 3. diagnostics that suggest what can work ------------------------------------------


def test_3_expired_suggests_the_same_request_and_not_active_its_start_time(su: User) -> None:
    expired = su.session("command", "sudo", duration="1s", sudo="systemctl status nginx")
    ends = datetime.fromisoformat(su.json("work-session", "describe", expired)["expires_at"])
    time.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 0.05)
    result = su.run("exec", "--output", "json", "--work-session", expired, WEB1, "--", "true")
    assert result.returncode == 3, result.stderr
    diagnostic = one_json_object(result.stderr)
    assert diagnostic["error_code"] == "work_session_expired"
    commands = [a["command"] for a in diagnostic["next_actions"]]
    assert not [c for c in commands if "extend" in c], commands
    assert commands[0] == (
        "agentctl work-session create --scope command,sudo --server web-01 --expires-in 1s "
        "--purpose test --sudo 'systemctl status nginx' --use"
    ), commands
    text = su.run("exec", "--work-session", expired, WEB1, "--", "true")
    assert "work-session create --scope command,sudo --server web-01" in text.stderr
    assert "extend" not in text.stderr

    later = su.session(starts_at="2099-01-01T00:00:00Z")  # approved, starts in the future
    result = su.run("exec", "--output", "json", "--work-session", later, WEB1, "--", "true")
    assert result.returncode == 3, result.stderr
    diagnostic = one_json_object(result.stderr)
    assert diagnostic["error_code"] == "work_session_not_active"
    assert diagnostic["context"]["starts_at"].startswith("2099-01-01T00:00:00")
    assert "2099-01-01" in diagnostic["reason"]
    assert "start time" in diagnostic["next_actions"][0]["description"]
    text = su.run("exec", "--work-session", later, WEB1, "--", "true")
    assert "starts at 2099-01-01" in text.stderr


# -- 4. an idle tunnel stops when its session is revoked --------------------------------


@pytest.mark.timeout(90)
def test_4_idle_tunnel_stops_at_once_when_its_session_is_revoked(su: User, admin: User) -> None:
    session = su.session("tunnel")
    with agentctl_tunnel(su, WEB1, 8080, "--work-session", session) as tunnel:
        revoked_at = time.monotonic()
        admin.ok("work-session", "revoke", session)
        _, err = tunnel.proc.communicate(timeout=RUN_TIMEOUT)
        stopped_in = time.monotonic() - revoked_at
    assert tunnel.proc.returncode == 3, err
    assert stopped_in < 10, stopped_in  # woken by the control plane, not a poll period
    assert "revoked" in err
    assert "Traceback" not in err


@pytest.mark.timeout(90)
def test_4_idle_tunnel_stops_when_its_session_expires(su: User) -> None:
    # Long enough for agentctl to start on a loaded machine; the test waits for the expiry.
    session = su.session("tunnel", duration="8s")
    ends = datetime.fromisoformat(su.json("work-session", "describe", session)["expires_at"])
    with agentctl_tunnel(su, WEB1, 8080, "--work-session", session) as tunnel:
        _, err = tunnel.proc.communicate(timeout=RUN_TIMEOUT)
        late = (datetime.now(UTC) - ends).total_seconds()
    assert tunnel.proc.returncode == 3, err
    assert late < 10, late  # the control plane's clock wakes the watch at the expiry
    assert "work_session_expired" in err


# -- 5. a token principal is told that sessions are not used ----------------------------


def test_5_token_principal_is_told_the_session_is_not_used(admin: User, su: User) -> None:
    session = su.session()
    ran = admin.run("exec", "--work-session", session, WEB1, "--", "echo", "token")
    assert (ran.returncode, ran.stdout) == (0, "token\n"), ran.stderr
    notes = ran.stderr.splitlines()
    assert len(notes) == 1, ran.stderr
    assert "not gated" in notes[0]
    assert session in notes[0]
    assert "--work-session" in notes[0]
    as_json = admin.run(
        "exec", "--output", "json", WEB1, "--", "true", env={"AGENTCTL_WORK_SESSION": session}
    )
    assert as_json.returncode == 0, as_json.stderr
    warning = one_json_object(as_json.stderr)
    assert warning["warning"] == "token_not_gated"
    assert warning["context"] == {"work_session": session, "source": "env"}
    assert json.loads(as_json.stdout)["exit_code"] == 0
    used = admin.run("work-session", "use", session)
    assert used.returncode == 0
    assert "not gated" in used.stderr
    # Nothing was attached, so nothing landed on the session's timeline.
    kinds = [item["type"] for item in su.json("work-session", "timeline", session)]
    assert "command" not in kinds


# -- 6. every timeline row has its detail -----------------------------------------------


def test_6_timeline_detail_column_is_filled_for_every_row(su: User, tmp_path: Path) -> None:
    session = su.session("command", "tunnel", "webftp")
    env = {"AGENTCTL_WORK_SESSION": session}
    su.ok("exec", WEB1, "--", "echo", "hi", env=env)
    local = tmp_path / "upload.txt"
    local.write_text("payload")
    su.ok("cp", str(local), f"{WEB1}:/tmp/predictable-{uuid.uuid4().hex}.txt", env=env)
    with agentctl_tunnel(su, WEB1, 8080, "--work-session", session) as tunnel:
        tunnel.stop()
    items = su.json("work-session", "timeline", session)
    kinds = {item["type"] for item in items}
    assert {"command", "webftp", "tunnel"} <= kinds, kinds
    table = su.ok("work-session", "timeline", session)
    header, *rows = table.splitlines()
    detail_at = header.index("DETAIL")
    assert len(rows) == len(items)
    for item, row in zip(items, rows, strict=True):
        detail = row[detail_at:].strip()
        assert "None" not in detail, (item, row)
        if item["type"] in ("command", "sudo", "websh", "webftp", "tunnel"):
            assert detail, (item, row)
        if item["type"] in ("webftp", "tunnel") and item.get("description"):
            assert item["description"][:40] in detail, (item, row)


# -- 7. create prints the id, whatever the status --------------------------------------


def test_7_create_prints_only_the_id_on_stdout_pending_or_approved(su: User, alice: User) -> None:
    create = ("work-session", "create", "--purpose", "x", "--server", WEB1, "--expires-in", "1h")
    active = su.run(*create)
    assert active.returncode == 0, active.stderr
    assert re.fullmatch(r"[0-9a-f-]{36}\n", active.stdout), active.stdout
    assert "active" in active.stderr  # the sentence is for people, on stderr
    pending = alice.run(*create)
    assert pending.returncode == 4, pending.stderr
    assert re.fullmatch(r"[0-9a-f-]{36}\n", pending.stdout), pending.stdout
    doc = json.loads(su.ok(*create, "--output", "json"))
    assert doc["status"] == "active"
    assert doc["work_session_id"] == doc["work_session"]["id"]


# -- 8. the selection belongs to one config and one principal ---------------------------


def test_8_selection_is_per_config_file_and_principal(
    cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    _, name1, token1 = new_login(cp, superuser=True)
    _, name2, token2 = new_login(cp, superuser=True)
    one = make_user(cp, shared / "one.toml", token1, name1)
    two = make_user(cp, shared / "two.toml", token2, name2)
    session = one.session()
    one.ok("work-session", "use", session)
    assert one.json("work-session", "current")["id"] == session
    assert two.json("work-session", "current") is None  # another config in the same directory
    # The same config file with another principal's token does not see it either.
    other = {"AGENTCTL_TOKEN": token2}
    assert one.json("work-session", "current", env=other) is None
    assert one.json("work-session", "current")["id"] == session


# -- 9. a terminal ended by revocation says why ----------------------------------------


@pytest.mark.root
@pytest.mark.timeout(120)
def test_9_terminal_ended_by_revocation_exits_3_with_the_reason(
    su: User, admin: User, tmp_path: Path
) -> None:
    from ptyprocess import PtyProcess

    session = su.session("websh")
    marker = tmp_path / "exit"
    script = (
        f"{sys.executable} -m fleetgate.agentctl websh {WEB1} --work-session {session}; "
        f"echo agentctl-exit=$? > {marker}"
    )
    proc = PtyProcess.spawn(["/bin/sh", "-c", script], env=su.env, cwd=str(REPO_ROOT))
    output = bytearray()
    try:
        deadline = time.monotonic() + 60
        proc.write(b"echo R''EADY\r")
        while b"READY" not in output:
            assert time.monotonic() < deadline, output.decode(errors="replace")
            try:
                output += proc.read(65536)
            except EOFError:
                exit_line = marker.read_text() if marker.exists() else "no exit status"
                pytest.fail(f"agentctl ended before the shell answered ({exit_line}): {output!r}")
        admin.ok("work-session", "revoke", session)
        while True:
            assert time.monotonic() < deadline, output.decode(errors="replace")
            try:
                output += proc.read(65536)
            except EOFError:
                break
    finally:
        if proc.isalive():
            proc.terminate(force=True)
    text = output.decode(errors="replace")
    assert marker.read_text().strip() == "agentctl-exit=3", text
    assert "revoked" in text
    assert "work_session_revoked" in text

    # 10 (last part): `--output json work-session recording` prints JSON, not a replay.
    with su.cp.client() as api:
        deadline = time.monotonic() + 30
        while True:
            found = api.get(TERMINALS, params={"work_session": session}).json()["results"]
            if found and found[0]["recording"]:
                break
            assert time.monotonic() < deadline, found
            time.sleep(0.05)
    recording = su.run("work-session", "recording", session, "--output", "json")
    assert recording.returncode == 0, recording.stderr
    documents = json.loads(recording.stdout)
    assert documents[0]["id"] == found[0]["id"]
    assert documents[0]["cast"]["header"]["version"] == 2
    printed = "".join(e[2] for e in documents[0]["cast"]["events"] if e[1] == "o")
    assert "READY" in printed


# -- 10. the small surprises ------------------------------------------------------------


def test_10_ls_shows_mine_pending_approved_active(alice: User, su: User) -> None:
    create = ("work-session", "create", "--purpose", "x", "--server", WEB1, "--expires-in", "1h")
    pending = alice.run(*create).stdout.strip()
    listed = alice.json("work-session", "ls")
    assert [s["id"] for s in listed] == [pending]
    assert pending in alice.ok("work-session", "ls")
    mine = su.session()
    theirs = {s["id"] for s in su.json("work-session", "ls")}
    assert mine in theirs
    assert pending not in theirs  # a superuser's default list is their own
    assert pending in {s["id"] for s in su.json("work-session", "ls", "--status", "all")}


def test_10_use_without_id_shows_the_current_one_and_use_clear_clears(su: User) -> None:
    session = su.session()
    none = su.run("work-session", "use")
    assert none.returncode == 0, none.stderr
    su.ok("work-session", "use", session)
    assert su.json("work-session", "use")["id"] == session
    assert session in su.ok("work-session", "use")
    cleared = su.run("work-session", "use", "clear")
    assert cleared.returncode == 0, cleared.stderr
    assert su.json("work-session", "current") is None


def test_10_help_and_create_messages(su: User, alice: User) -> None:
    helped = su.ok("--help")
    assert re.search(r"\b6 the requested work session ended", " ".join(helped.split())), helped
    no_purpose = su.run("work-session", "create", "--server", WEB1, "--expires-in", "1h")
    assert no_purpose.returncode == 2
    assert "--purpose is required" in no_purpose.stderr
    assert "Non-interactive" not in no_purpose.stderr
    too_long = su.run(
        *("work-session", "create", "--purpose", "x", "--server", WEB1, "--expires-in", "5h")
    )
    assert too_long.returncode == 1
    assert "--expires-in 5h is longer than the longest work session allowed (4h)" in (
        too_long.stderr
    ), too_long.stderr
    assert "minutes" not in too_long.stderr
    myself = alice.run(
        *("work-session", "create", "--purpose", "x", "--server", WEB1, "--expires-in", "1h"),
        *("--assignee", alice.username, "--output", "json"),
    )
    assert myself.returncode == 4, myself.stderr  # pending, not refused
    session = json.loads(myself.stdout)["work_session_id"]
    described = alice.json("work-session", "describe", session)
    assert described["assigned_user"]["name"] == alice.username


# -- 11. the README's gated flow works as written ---------------------------------------


def readme_gated_flow() -> str:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Try the gated workflow", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


@pytest.mark.root
@pytest.mark.timeout(120)
def test_11_readme_gated_flow_runs_as_written(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    """The README's block, line by line in one shell, on this stack instead of `make run`:
    its URL, database, directory, hostname and the account (a throw-away user, as the
    reader's own would be) substituted, and nothing else."""
    with temporary_user() as account:
        run_readme_gated_flow(cp, tmp_path, account.name)


def run_readme_gated_flow(cp: ControlPlaneProcess, tmp_path: Path, account: str) -> None:
    script = readme_gated_flow()
    assert "agentctl login" in script
    assert "work-session approve" in script
    user = f"alice{uuid.uuid4().hex[:8]}"
    script = (
        script.replace(". .venv/bin/activate\n", "")
        .replace("http://127.0.0.1:8000", cp.url)
        .replace(".dev/controlplane.db", str(cp.db_path))
        .replace("$(hostname)", WEB1)
        .replace("$(id -un)", account)
        .replace("alice", user)
    )
    dev = tmp_path / ".dev"
    dev.mkdir()
    (dev / "agentctl.toml").write_text(
        f'url = "{cp.url}"\ntoken = "{cp.admin_token}"\n', encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        ["/bin/bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    out, err = result.stdout, result.stderr
    assert result.returncode == 0, (out, err)
    assert "hello from a work session" in out, (out, err)
    assert "work_session_required" in err  # the refused exec before the approval
    assert f"Logged in to {cp.url} as {user} (login)" in err
    assert re.search(r"Work session:\s+[0-9a-f-]{36} \(from work-session use\)", out), out
    assert "echo hello from a work session" in out  # the timeline's command row
