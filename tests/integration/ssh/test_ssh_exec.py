"""``ssh host cmd`` through a work session: the user's identity, exit codes, stdin, the
timeline."""

from __future__ import annotations

import secrets
import subprocess
import time

import pytest

from tests.integration.ssh.conftest import SshStack, ssh


pytestmark = pytest.mark.root


def test_ssh_exec_runs_as_the_user_with_its_exit_code(sstack: SshStack) -> None:
    session = sstack.session()
    config = sstack.configure("exec", session)
    done = ssh(config, sstack.server, "id -un; id -G; echo err >&2; exit 7")
    assert done.returncode == 7, done.stderr
    lines = done.stdout.decode().split("\n")
    assert lines[0] == sstack.user.name
    assert sorted(int(g) for g in lines[1].split()) == sorted(sstack.user.groups)
    assert b"err" in done.stderr
    # stdin reaches the command, and its environment is clean.
    piped = ssh(config, sstack.server, "cat; env", stdin=b"hello over ssh\n")
    assert piped.returncode == 0, piped.stderr
    out = piped.stdout.decode()
    assert out.startswith("hello over ssh\n")
    assert f"USER={sstack.user.name}" in out
    assert "AGENT_DAEMON_SECRET_SENTINEL" not in out
    assert ssh(config, sstack.server, "true").returncode == 0
    assert ssh(config, sstack.server, "kill -9 $$").returncode == 137
    # Every exec is on the timeline as a command, with its exit code.
    events = sstack.events(session, lambda es: sum(e.get("via") == "ssh" for e in es) >= 4)
    commands = [e for e in events if e["type"] == "command" and e.get("via")]
    by_line = {e["line"]: e for e in commands}
    assert by_line["id -un; id -G; echo err >&2; exit 7"]["exit_code"] == 7
    assert by_line["true"]["success"] is True


def test_agentctl_ssh_runs_the_system_ssh(sstack: SshStack) -> None:
    session = sstack.session(("command",))
    cli = sstack.cli("agentctl-ssh")
    done = cli.run(
        *("ssh", "--work-session", session, "--user", sstack.user.name, sstack.server),
        *("echo", "via-agentctl", "$(id -un)", ";", "exit", "4"),
    )
    assert done.returncode == 4, done.stderr
    assert done.stdout == f"via-agentctl {sstack.user.name}\n"


def test_a_command_ends_when_its_client_goes_away(sstack: SshStack) -> None:
    session = sstack.session(("command",))
    config = sstack.configure("gone", session)
    marker = f"{3000 + secrets.randbelow(1000)}.{secrets.randbelow(10**6)}"
    proc = subprocess.Popen(
        ["ssh", "-F", str(config), sstack.server, f"echo started; exec sleep {marker}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"started\n"
        assert running(marker)
    finally:
        proc.kill()  # the client dies without a word
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    deadline = time.monotonic() + 20
    while running(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(marker)


def running(marker: str) -> bool:
    found = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, check=False)
    return found.returncode == 0
