"""agentctl end to end: the CLI as a subprocess against the real control plane and agent.

One control plane and one agent (server `web-01`) serve the whole module; each test runs
`python -m fleetgate.agentctl ...` with `AGENTCTL_CONFIG` pointing at a config written
for that control plane's admin token.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess, running_agent
from tests.support.agentctl import RUN_TIMEOUT, AgentctlRunner
from tests.support.controlplane import REPO_ROOT, running_control_plane


SERVER = "web-01"


@dataclass
class Cli(AgentctlRunner):
    """Runs agentctl against one control plane, with a config holding its admin token."""

    def command(self, command_id: str) -> dict[str, Any]:
        """The command object, straight from the API."""
        with self.cp.client() as client:
            response = client.get(f"/api/events/commands/{command_id}/")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def wait_handled(self, command_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll the API until the command has a result (there is no event to await)."""
        deadline = time.monotonic() + timeout
        while True:
            command = self.command(command_id)
            if command["handled_at"] is not None:
                return command
            assert time.monotonic() < deadline, f"command {command_id} not handled: {command}"
            time.sleep(0.05)


@dataclass
class Stack(Cli):
    """A Cli whose control plane also has a connected agent, server SERVER."""

    agent: AgentProcess | None = None

    @property
    def server_id(self) -> str:
        assert self.agent is not None
        return self.agent.server_id


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """A control plane (no agent yet) and agentctl configured for it."""
    root = tmp_path_factory.mktemp("agentctl")
    with running_control_plane(root / "cp") as cp:
        config = root / "agentctl.toml"
        config.write_text(f'url = "{cp.url}"\ntoken = "{cp.admin_token}"\n', encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
        env.update({"AGENTCTL_CONFIG": str(config), "PYTHONUNBUFFERED": "1"})
        yield Cli(cp, env)


@pytest.fixture(scope="module")
def stack(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`cli` plus a real agent connected as SERVER."""
    with running_agent(cli.cp, tmp_path_factory.mktemp("agent"), name=SERVER) as agent:
        yield Stack(cli.cp, cli.env, agent)


# -- without an agent -----------------------------------------------------------------


def test_whoami(cli: Cli) -> None:
    result = cli.run("whoami", "--output", "json")
    assert result.returncode == 0, result.stderr
    me = json.loads(result.stdout)
    assert me["username"] == "admin"
    assert me["is_superuser"] is True
    assert me["auth_method"] == "token"
    assert me["work_session_required"] is False
    text = cli.run("whoami")
    assert text.returncode == 0
    assert "admin" in text.stdout
    assert cli.cp.admin_token not in text.stdout + text.stderr


def test_server_ls(cli: Cli) -> None:
    server_id, _ = cli.cp.register_server("idle-01")
    result = cli.run("server", "ls")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "CONNECTED", "AGENT", "LAST", "SEEN"]
    assert ["idle-01", server_id, "no"] in [r.split()[:3] for r in rows]
    listing = json.loads(cli.run("servers", "--output", "json").stdout)
    assert {"name": "idle-01", "id": server_id, "is_connected": False}.items() <= next(
        s for s in listing if s["name"] == "idle-01"
    ).items()


def test_unknown_server_exits_1_with_json_diagnostic(cli: Cli) -> None:
    result = cli.run("--output", "json", "exec", "no-such-server", "--", "true")
    assert result.returncode == 1
    assert result.stdout == ""
    diag = json.loads(result.stderr)
    assert diag["error_code"] == "SERVER_NOT_FOUND"
    assert {"reason", "context", "next_actions"} <= set(diag)
    text = cli.run("exec", "no-such-server", "--", "true")
    assert text.returncode == 1
    assert "(SERVER_NOT_FOUND)" in text.stderr


def test_offline_server_exits_1(cli: Cli) -> None:
    cli.cp.register_server("offline-01")
    result = cli.run("exec", "offline-01", "--", "true")
    assert result.returncode == 1
    assert "(SERVER_NOT_CONNECTED)" in result.stderr


def test_bad_token_exits_1_with_login_hint(cli: Cli) -> None:
    result = cli.run("whoami", env={"AGENTCTL_TOKEN": "fat_not-a-real-token"})
    assert result.returncode == 1
    assert "(AUTHENTICATION_FAILED)" in result.stderr
    assert "agentctl login" in result.stderr


def test_unreachable_control_plane_exits_1(cli: Cli) -> None:
    result = cli.run("whoami", env={"AGENTCTL_URL": "http://127.0.0.1:9"})
    assert result.returncode == 1
    assert result.stderr.startswith("agentctl: cannot reach http://127.0.0.1:9: ")


def test_login_and_logout(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "sub" / "config.toml"
    env = {"AGENTCTL_CONFIG": str(config)}
    bad = cli.run("login", cli.cp.url, "--token", "fat_wrong", env=env)
    assert bad.returncode == 1
    assert not config.exists()
    login = cli.run("login", cli.cp.url, "--token-stdin", env=env, stdin=cli.cp.admin_token + "\n")
    assert login.returncode == 0, login.stderr
    assert config.stat().st_mode & 0o777 == 0o600
    assert cli.run("whoami", env=env).returncode == 0
    assert cli.run("logout", env=env).returncode == 0
    assert cli.cp.admin_token not in config.read_text()
    assert cli.run("whoami", env=env).returncode == 1


# -- with a connected agent ------------------------------------------------------------


def test_server_ls_shows_the_connected_agent(stack: Stack) -> None:
    rows = [r.split() for r in stack.run("servers").stdout.splitlines()]
    assert [SERVER, stack.server_id, "yes"] in [r[:3] for r in rows]


def test_exec_prints_remote_output_and_exits_0(stack: Stack) -> None:
    result = stack.run("exec", SERVER, "--", "id", "-un")
    assert (result.returncode, result.stdout, result.stderr) == (0, "root\n", "")


def test_exec_to_its_end_imports_no_heavy_library(stack: Stack) -> None:
    """`exec` run to completion (issue 15: whole process as fast as `ssh`): the streaming
    create goes through the standard library; httpx, pydantic, rich and websockets stay
    unloaded unless something goes wrong."""
    argv = ["exec", SERVER, "--", "echo", "light"]
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fleetgate.agentctl", *argv],
        cwd=REPO_ROOT,
        env=stack.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "light\n"), result.stderr[-2000:]
    modules = {
        line.split("|")[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "http.client" in modules
    heavy = ("httpx", "pydantic", "rich", "websockets", "fleetgate.shared.protocol")
    assert not {m for m in modules if m.startswith(heavy)}


def test_exec_by_server_id(stack: Stack) -> None:
    result = stack.run("exec", stack.server_id, "--", "echo", "by-id")
    assert (result.returncode, result.stdout) == (0, "by-id\n")


def test_exec_passes_the_remote_exit_code_through(stack: Stack) -> None:
    # ssh semantics: the words are joined with spaces, so the script is quoted for the remote sh.
    result = stack.run("exec", SERVER, "--", "sh", "-c", "'exit 7'")
    assert result.returncode == 7, result.stderr
    # One argument is used as is.
    assert stack.run("exec", SERVER, "--", "exit 7").returncode == 7


def test_exec_user_env_and_shell_syntax(stack: Stack) -> None:
    result = stack.run(
        "exec",
        SERVER,
        "-u",
        "root",
        "--env",
        "GREETING=hi there",
        "--",
        'echo "$GREETING" | tr a-z A-Z',
    )
    assert (result.returncode, result.stdout) == (0, "HI THERE\n"), result.stderr


def test_multi_chunk_output_arrives_complete_and_logs_reproduce_it(stack: Stack) -> None:
    expected = "".join(f"{i}\n" for i in range(1, 20001))  # ~108 KB: many 4 KiB chunks
    result = stack.run("exec", SERVER, "--", "seq", "1", "20000")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected

    doc_run = stack.run("exec", SERVER, "--output", "json", "--", "seq", "1", "20000")
    assert doc_run.returncode == 0, doc_run.stderr
    doc = json.loads(doc_run.stdout)
    assert doc["output"] == expected
    assert (doc["exit_code"], doc["success"], doc["status"]) == (0, True, "Success")
    for key in ("elapsed_time", "delivered_at", "acked_at", "handled_at", "response_delay"):
        assert doc[key] is not None, key

    with stack.cp.client() as client:
        chunks = client.get(f"/api/events/commands/{doc['id']}/chunks/").json()
    assert chunks["count"] > 1, "the output should span several chunks"

    logs = stack.run("exec", "logs", doc["id"])
    assert (logs.returncode, logs.stdout) == (0, expected)


def test_exec_logs_exits_with_the_command_exit_code(stack: Stack) -> None:
    run = stack.run("--output", "json", "exec", SERVER, "--", "echo out; exit 3")
    assert run.returncode == 3
    command_id = json.loads(run.stdout)["id"]
    logs = stack.run("exec", "logs", command_id)
    assert (logs.returncode, logs.stdout) == (3, "out\n")


def test_exec_ls_lists_the_command(stack: Stack) -> None:
    run = stack.run("--output", "json", "exec", SERVER, "--", "echo", "listed-marker")
    command_id = json.loads(run.stdout)["id"]
    listing = stack.run("exec", "ls", "--output", "json")
    assert listing.returncode == 0, listing.stderr
    commands = json.loads(listing.stdout)
    assert command_id in [c["id"] for c in commands]
    assert commands[0]["id"] == command_id  # newest first

    found = stack.run("exec", "history", "-s", SERVER, "--search", "listed-marker", "-n", "5")
    assert found.returncode == 0, found.stderr
    header, *rows = found.stdout.splitlines()
    assert header.split()[:3] == ["SERVER", "COMMAND", "USER"]
    assert len(rows) == 1
    assert rows[0].startswith(f"{SERVER}  echo listed-marker")


def test_detach_then_logs(stack: Stack) -> None:
    result = stack.run("exec", "--detach", SERVER, "--", "echo", "detached")
    assert result.returncode == 0, result.stderr
    command_id = result.stdout.strip()
    stack.wait_handled(command_id)
    logs = stack.run("exec", "logs", command_id)
    assert (logs.returncode, logs.stdout) == (0, "detached\n")


def _script_waiting_for(flag: Path) -> str:
    # Prints a line, then waits (bounded) for the test to create `flag`.
    return (
        f"echo first; for i in $(seq 600); do [ -e {flag} ] && break; sleep 0.05; done; echo second"
    )


def test_output_is_streamed_as_it_arrives(stack: Stack, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    proc = stack.popen("exec", SERVER, "--", _script_waiting_for(flag))
    try:
        assert proc.stdout is not None
        # "first" is printed while the remote command is still waiting for the flag.
        assert proc.stdout.readline() == "first\n"
        assert proc.poll() is None
        flag.touch()
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        flag.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out, err) == (0, "second\n", "")


def test_ctrl_c_while_following_exits_130_with_the_command_id(stack: Stack, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    proc = stack.popen("exec", SERVER, "--", _script_waiting_for(flag))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "first\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        flag.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "agentctl exec logs " in err
    command_id = err.split("agentctl exec logs ")[1].split()[0]
    # The remote command was not killed: it finishes once released.
    assert stack.wait_handled(command_id)["exit_code"] == 0


def test_timeout_reports_the_error_phase(stack: Stack) -> None:
    result = stack.run("exec", "--timeout", "1", SERVER, "--", "sleep", "30")
    assert result.returncode == 124, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("agentctl: Timed out")


def test_exec_follows_through_a_control_plane_crash(stack: Stack, tmp_path: Path) -> None:
    """The stream breaks when the control plane dies; agentctl resumes from the next seq.

    Kept last: it restarts the module's control plane (same port, same database).
    """
    flag = tmp_path / "go"
    proc = stack.popen("exec", SERVER, "--", _script_waiting_for(flag))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "first\n"
        stack.cp.restart(kill=True)
        assert stack.agent is not None
        stack.agent.wait_connected()
        flag.touch()
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        flag.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out) == (0, "second\n"), err
