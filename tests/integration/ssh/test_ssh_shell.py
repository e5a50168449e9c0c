"""Interactive ``ssh`` on a real PTY: the websh shell (user, resize, exit status), its
recording shipped and played like a websh terminal's, and the end of the work session
ending the connection with a message."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ptyprocess import PtyProcess

from tests.integration.ssh.conftest import SshStack
from tests.support.controlplane import REPO_ROOT
from tests.support.websh import PtyScreen, run_on_pty


pytestmark = pytest.mark.root


def spawn_ssh(sstack: SshStack, config: str, *args: str) -> PtyProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTCTL_", "SSH_"))}
    env["TERM"] = "xterm"
    script = f"ssh -F {config} {' '.join(args)} {sstack.server}; echo ssh-exit=$?"
    return PtyProcess.spawn(["/bin/sh", "-c", script], env=env, dimensions=(30, 100))


async def test_interactive_ssh_is_a_recorded_websh_shell(sstack: SshStack) -> None:
    session = sstack.session(("websh",))
    config = sstack.configure("shell", session)
    proc = spawn_ssh(sstack, str(config))
    screen = PtyScreen(proc)
    try:
        await screen.expect(r"\$ ")
        proc.write(b"echo U''=$(id -un) T''=$(tty)\r")
        match = await screen.expect(r"U=(\w+) T=(/dev/pts/\d+)")
        assert match.group(1) == sstack.user.name
        proc.write(b"echo S''=$(stty size)\r")
        assert (await screen.expect(r"S=(\d+ \d+)")).group(1) == "30 100"
        proc.setwinsize(40, 120)  # SIGWINCH to ssh: a window-change request to the agent
        deadline = time.monotonic() + 10
        while True:  # the resize races the next line typed: ask until it has landed
            proc.write(b"echo S''=$(stty size)\r")
            size = (await screen.expect(r"S=(\d+ \d+)")).group(1)
            if size == "40 120" or time.monotonic() > deadline:
                break
        assert size == "40 120"
        proc.write(b"exit 3\r")
        assert (await screen.expect(r"ssh-exit=(\d+)")).group(1) == "3"
        await screen.until_eof()
    finally:
        if proc.isalive():
            proc.terminate(force=True)
    # The shell is on the timeline as a terminal; its recording arrives and plays.
    await asyncio.to_thread(check_recording, sstack, session)


def check_recording(sstack: SshStack, session: str) -> None:
    """The shell's timeline item, and its recording, stored and played by agentctl."""
    events = sstack.events(session, lambda es: any(e["type"] == "websh" for e in es))
    shells = [e for e in events if e["type"] == "websh" and e.get("via") == "ssh"]
    assert len(shells) == 1
    terminal_id = shells[0]["terminal_id"]
    deadline = time.monotonic() + 20
    with sstack.cp.client(sstack.token) as client:
        while True:
            answer = client.get(f"/api/websh/terminals/{terminal_id}/recording/")
            if answer.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert answer.status_code == 200, answer.text
    cast = answer.text
    assert '"version": 2' in cast.split("\n", 1)[0]
    assert sstack.user.name in cast  # the output of `id -un`
    assert '"r", "120x40"' in cast  # the resize
    played = subprocess.run(
        [sys.executable, "-m", "fleetgate.agentctl", "work-session", "recording", session, "--raw"],
        env=sstack.cli("shell").env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert played.returncode == 0, played.stderr
    assert played.stdout == cast
    # asciinema itself reads it (cat prints the recorded output).
    path = sstack.root / "shell" / "recording.cast"
    path.write_text(cast, encoding="utf-8")
    status, shown = run_on_pty(["asciinema", "cat", str(path)])  # it opens /dev/tty
    assert status == 0, shown
    assert f"U={sstack.user.name}".encode() in shown


async def test_revoking_the_work_session_disconnects_with_a_message(sstack: SshStack) -> None:
    session = sstack.session(("websh", "command"))
    config = sstack.configure("revoke", session)
    proc = spawn_ssh(sstack, str(config))
    screen = PtyScreen(proc)
    try:
        await screen.expect(r"\$ ")
        with sstack.cp.client(sstack.token) as client:
            revoked = client.post(f"/api/work-sessions/sessions/{session}/revoke/", json={})
        assert revoked.status_code == 200, revoked.text
        match = await screen.expect(
            r"fleetgate: (work session \S+ (?:has ended \(\w+\)|is revoked \(work_session_revoked\)))"
        )
        assert session in match.group(1)
        assert (await screen.expect(r"ssh-exit=(\d+)")).group(1) == "255"
        await screen.until_eof()
    finally:
        if proc.isalive():
            proc.terminate(force=True)


async def test_the_end_of_the_work_session_disconnects(sstack: SshStack) -> None:
    session = sstack.session(("websh",), duration="6s")
    config = sstack.configure("expiry", session)
    proc = spawn_ssh(sstack, str(config))
    screen = PtyScreen(proc)
    try:
        # The agent's clock (at the grant's end) or the control plane's (work_session.ended)
        # ends it, whichever is first; on a slow machine the gate may already refuse.
        match = await screen.expect(
            r"fleetgate: (the work session has expired|work session \S+ has ended "
            r"\(expired\)|work session \S+ (?:has|is) expired \(work_session_expired\))"
        )
        assert match.group(1)
        assert (await screen.expect(r"ssh-exit=(\d+)")).group(1) == "255"
        await screen.until_eof()
    finally:
        if proc.isalive():
            proc.terminate(force=True)


async def test_a_shell_ends_when_its_client_dies(sstack: SshStack) -> None:
    """No detached SSH shell is left behind (there is no reattaching to one)."""
    config = sstack.configure("dies", sstack.session(("websh",)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTCTL_", "SSH_"))}
    env["TERM"] = "xterm"
    proc = PtyProcess.spawn(["ssh", "-F", str(config), sstack.server], env=env)
    screen = PtyScreen(proc)
    try:
        await screen.expect(r"\$ ")
        proc.write(b"echo P''ID=$$\r")
        pid = int((await screen.expect(r"PID=(\d+)")).group(1))
    finally:
        proc.kill(signal.SIGKILL)
        proc.wait()
    assert await asyncio.to_thread(gone, pid, 20.0)


def gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` has exited within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
