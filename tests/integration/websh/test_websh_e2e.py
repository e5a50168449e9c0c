"""Websh through the real stack: control plane and agent subprocesses, a websockets client
playing agentctl, real users and PTYs."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from ptyprocess import PtyProcess
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.support.accounts import active_session, new_login
from tests.support.agent import AgentProcess, running_agent, start_agent
from tests.support.controlplane import REPO_ROOT, ControlPlaneProcess, running_control_plane
from tests.support.proxy import running_proxy
from tests.support.users import CreatedUser, temporary_user
from tests.support.websh import PtyScreen, TerminalReader, run_on_pty, ws_source


pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]

TERMINALS = "/api/websh/terminals/"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ControlPlaneProcess, AgentProcess]]:
    workdir: Path = tmp_path_factory.mktemp("websh")
    with (
        running_control_plane(workdir / "cp") as cp,
        running_agent(
            cp, workdir / "agent", sections={"websh": {"detach_grace": 30.0, "hangup_grace": 1.0}}
        ) as agent,
    ):
        yield cp, agent


@pytest.fixture
def user() -> Iterator[CreatedUser]:
    with temporary_user() as created:
        yield created


class Session:
    """One attached client websocket and what it received."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.closed: list[tuple[int, str]] = []
        self.reader = TerminalReader(ws_source(ws, self.closed))

    async def type(self, text: str) -> None:
        await self.ws.send(text.encode())

    async def ask(self, line: str, pattern: str) -> str:
        await self.type(line + "\n")
        return (await self.reader.expect(pattern)).group(1)


@asynccontextmanager
async def attach(
    cp: ControlPlaneProcess, terminal_id: str, token: str | None = None, **params: Any
) -> AsyncIterator[Session]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    url = (
        cp.url.replace("http://", "ws://")
        + f"/ws/websh/{terminal_id}/"
        + (f"?{query}" if query else "")
    )
    async with connect(url, additional_headers=cp.auth_headers(token), max_size=None) as ws:
        yield Session(ws)


def create_terminal(
    cp: ControlPlaneProcess, server: str, username: str, token: str | None = None, **body: Any
) -> httpx.Response:
    with cp.client(token) as client:
        return client.post(TERMINALS, json={"server": server, "username": username, **body})


def wait_recording(
    cp: ControlPlaneProcess, terminal_id: str, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with cp.client() as client:
        while True:
            terminal = client.get(f"{TERMINALS}{terminal_id}/").json()
            if terminal["recording"] is not None:
                return dict(terminal)
            assert time.monotonic() < deadline, f"no recording: {terminal}"
            time.sleep(0.05)


async def test_a_session_end_to_end_with_reattach_and_recording(
    stack: tuple[ControlPlaneProcess, AgentProcess], user: CreatedUser, tmp_path: Path
) -> None:
    cp, agent = stack
    created = create_terminal(cp, agent.name, user.name, rows=24, cols=80)
    assert created.status_code == 201, created.text
    terminal = created.json()
    assert terminal["status"] == "created"
    tid = terminal["id"]
    async with attach(cp, tid, rows=24, cols=80) as first:
        ready = await first.reader.control("ready")
        assert ready["reattached"] is False
        assert await first.ask("echo h''i-$((40+2))", r"(hi-42)\r\n") == "hi-42"
        assert await first.ask("echo U''=$(id -un)", r"U=(\w+)\r\n") == user.name
        await first.ws.send(json.dumps({"type": "resize", "rows": 40, "cols": 132}))
        assert await first.ask("echo S''=$(stty size)", r"S=(\d+ \d+)\r\n") == "40 132"
        await first.ask("KEEP=still-$((2*21)); echo K''=$KEEP", r"K=(\S+)\r\n")
        first.ws.transport.abort()  # the client's connection drops without a close
    with cp.client() as client:
        assert client.get(f"{TERMINALS}{tid}/").json()["status"] == "open"
    async with attach(cp, tid) as second:
        ready = await second.reader.control("ready")
        assert ready["reattached"] is True
        assert await second.ask("echo A''=$KEEP", r"A=(\S+)\r\n") == "still-42"
        await second.type("exit 3\n")
        assert await second.reader.control("exit") == {
            "type": "exit",
            "code": 3,
            "reason": "exited",
        }
        await second.reader.until_closed()
        assert second.closed == [(1000, "exited")]

    detail = wait_recording(cp, tid)
    assert detail["status"] == "closed"
    with cp.client() as client:
        response = client.get(f"{TERMINALS}{tid}/recording/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-asciicast")
    lines = response.text.splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2
    assert (header["width"], header["height"]) == (80, 24)
    events = [json.loads(line) for line in lines[1:]]
    times = [e[0] for e in events]
    assert times == sorted(times)
    codes = {e[1] for e in events}
    assert codes == {"o", "i", "r"}
    output = "".join(e[2] for e in events if e[1] == "o")
    assert "hi-42" in output
    assert "still-42" in output
    assert ["r", "132x40"] in [e[1:] for e in events]
    # The agent deleted its copy after the control plane's acknowledgement.
    assert not list((agent.workdir / "state" / "recordings").glob("*.cast"))
    if shutil.which("asciinema"):
        cast = tmp_path / "session.cast"
        cast.write_bytes(response.content)
        status, played = run_on_pty(["asciinema", "cat", str(cast)])
        assert status == 0, played
        assert b"hi-42" in played
        assert b"still-42" in played


async def test_deeply_nested_control_frames_are_malformed_and_the_terminal_lives_on(
    stack: tuple[ControlPlaneProcess, AgentProcess], user: CreatedUser
) -> None:
    """Issue 14 finding 7: a nested control frame raised RecursionError in the agent's
    terminal (the channel died with 1011); now it is answered ``malformed``."""
    cp, agent = stack
    created = create_terminal(cp, agent.name, user.name)
    assert created.status_code == 201, created.text
    async with attach(cp, created.json()["id"]) as session:
        await session.reader.control("ready")
        for frame in [
            "[" * 2000 + "]" * 2000,
            '{"type": "resize", "rows": ' + "[" * 2000 + "]" * 2000 + "}",
        ]:
            await session.ws.send(frame)
            error = await session.reader.control("error")
            assert error["code"] == "malformed", error
        assert await session.ask("echo S''=alive", r"S=(\w+)\r\n") == "alive"
        assert session.closed == []
        await session.type("exit\n")
        await session.reader.until_closed()


async def test_refusals(stack: tuple[ControlPlaneProcess, AgentProcess], user: CreatedUser) -> None:
    cp, agent = stack
    # Bad input: a clear 400 naming the field.
    bad = create_terminal(cp, agent.name, "no/such", rows=0)
    assert bad.status_code == 400, bad.text
    unknown_server = create_terminal(cp, "no-such-server", user.name)
    assert unknown_server.status_code == 404
    # A login principal without a work session: the gate's code.
    _, _, token = new_login(cp)
    gated = create_terminal(cp, agent.name, user.name, token=token)
    assert gated.status_code == 403
    assert gated.json()["code"] == "work_session_required"
    # An unknown account on the server: the channel closes with 4403 and the agent's code.
    terminal = create_terminal(cp, agent.name, "nosuchuser1234").json()
    async with attach(cp, terminal["id"]) as session:
        await session.reader.until_closed()
        code, reason = session.closed[0]
        assert code == 4403
        assert json.loads(reason)["code"] == "unknown_user"
    # Someone else cannot attach to a terminal (it does not exist for them).
    mine = create_terminal(cp, agent.name, user.name).json()
    with pytest.raises(InvalidStatus) as other:
        async with attach(cp, mine["id"], token=token):
            pass
    assert other.value.response.status_code == 404


async def test_ending_the_work_session_closes_its_terminal(
    stack: tuple[ControlPlaneProcess, AgentProcess], user: CreatedUser
) -> None:
    cp, agent = stack
    _, _, token = new_login(cp, superuser=True)  # a superuser's own session is active at once
    session = active_session(cp, token, server=agent.name, scopes=["websh"])
    with cp.client(token) as client:
        created = client.post(
            TERMINALS,
            json={"server": agent.name, "username": user.name, "work_session": session["id"]},
        )
        assert created.status_code == 201, created.text
    tid = created.json()["id"]
    async with attach(cp, tid, token=token) as terminal:
        await terminal.reader.control("ready")
        await terminal.ask("echo W''=ok", r"W=(ok)\r\n")
        with cp.client(token) as client:
            done = client.post(f"/api/work-sessions/sessions/{session['id']}/complete/", json={})
            assert done.status_code == 200, done.text
        # The client learns why: close 4403 with the session's end as the code.
        await terminal.reader.until_closed(timeout=20)
        code, reason = terminal.closed[0]
        assert code == 4403
        assert json.loads(reason)["code"] == "work_session_completed"
    wait_recording(cp, tid)
    await asyncio.sleep(0)


async def test_agentctl_websh_on_a_pseudo_terminal(
    stack: tuple[ControlPlaneProcess, AgentProcess], user: CreatedUser, tmp_path: Path
) -> None:
    """The real CLI in raw mode on a PTY: typing, resize, the exit code, the terminal
    mode restored; and `websh SERVER CMD` through the command path."""
    cp, agent = stack
    env = agentctl_env(cp, tmp_path)
    before, after = tmp_path / "before", tmp_path / "after"
    script = (
        f"stty -g > {before}; {sys.executable} -m fleetgate.agentctl websh {agent.name} "
        f"-u {user.name}; echo agentctl-exit=$?; stty -g > {after}"
    )
    proc = PtyProcess.spawn(
        ["/bin/sh", "-c", script], env=env, cwd=str(REPO_ROOT), dimensions=(30, 100)
    )
    screen = PtyScreen(proc)
    try:
        await screen.expect(r"\$ ")
        proc.write(b"echo h''i-$((40+2)) U''=$(id -un)\r")
        assert (await screen.expect(r"hi-42 U=(\w+)")).group(1) == user.name
        proc.write(b"echo S''=$(stty size)\r")
        assert (await screen.expect(r"S=(\d+ \d+)")).group(1) == "30 100"
        proc.setwinsize(40, 120)  # SIGWINCH to agentctl, a resize frame to the agent
        deadline = time.monotonic() + 10
        while True:  # the resize races the next line typed: ask until it has landed
            proc.write(b"echo S''=$(stty size)\r")
            size = (await screen.expect(r"S=(\d+ \d+)")).group(1)
            if size == "40 120" or time.monotonic() > deadline:
                break
        assert size == "40 120"
        proc.write(b"exit 5\r")
        assert (await screen.expect(r"agentctl-exit=(\d+)")).group(1) == "5"
        await screen.until_eof()
    finally:
        if proc.isalive():
            proc.terminate(force=True)
    assert before.read_text() == after.read_text()  # the terminal mode is restored


def agentctl_env(cp: ControlPlaneProcess, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "agentctl.toml"
    config.write_text(f'url = "{cp.url}"\ntoken = "{cp.admin_token}"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
    env.update({"AGENTCTL_CONFIG": str(config), "TERM": "xterm", "PYTHONUNBUFFERED": "1"})
    return env


def test_agentctl_websh_with_a_command_uses_the_command_path(
    stack: tuple[ControlPlaneProcess, AgentProcess], user: CreatedUser, tmp_path: Path
) -> None:
    cp, agent = stack
    env = agentctl_env(cp, tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetgate.agentctl",
            "websh",
            agent.name,
            "-u",
            user.name,
            "echo one-$((1+1))",
        ],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "one-2\n"
    interactive_without_tty = subprocess.run(
        [sys.executable, "-m", "fleetgate.agentctl", "websh", agent.name],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert interactive_without_tty.returncode == 2, interactive_without_tty.stderr
    assert "needs a terminal" in interactive_without_tty.stderr


def test_agentctl_work_session_recording_replays_the_output(
    stack: tuple[ControlPlaneProcess, AgentProcess], user: CreatedUser, tmp_path: Path
) -> None:
    cp, agent = stack
    _, _, token = new_login(cp, superuser=True)
    session = active_session(cp, token, server=agent.name, scopes=["websh"])
    with cp.client(token) as client:
        created = client.post(
            TERMINALS,
            json={"server": agent.name, "username": user.name, "work_session": session["id"]},
        )
        assert created.status_code == 201, created.text
    tid = created.json()["id"]

    async def drive() -> None:
        async with attach(cp, tid, token=token) as terminal:
            await terminal.ask("echo R''=$((7*6))", r"R=(42)\r\n")
            await terminal.type("exit\n")
            await terminal.reader.control("exit")

    asyncio.run(drive())
    wait_recording(cp, tid)
    env = agentctl_env(cp, tmp_path)
    argv = [
        sys.executable,
        "-m",
        "fleetgate.agentctl",
        "work-session",
        "recording",
        session["id"],
    ]
    raw = subprocess.run(
        [*argv, "--raw"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert raw.returncode == 0, raw.stderr
    lines = raw.stdout.splitlines()
    assert json.loads(lines[0])["version"] == 2
    recorded = "".join(e[2] for e in map(json.loads, lines[1:]) if e[1] == "o")
    played = subprocess.run(
        [*argv, "--speed", "100"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert played.returncode == 0, played.stderr
    assert played.stdout.decode() == recorded
    assert "R=42" in recorded
    nothing = subprocess.run(
        [*argv[:-1], "no-such-session"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert nothing.returncode != 0


async def test_agentctl_websh_reattaches_after_a_network_drop(
    stack: tuple[ControlPlaneProcess, AgentProcess], user: CreatedUser, tmp_path: Path
) -> None:
    """The connection between agentctl and the control plane is reset: agentctl reattaches
    to the same shell by itself (a variable set before is still set)."""
    cp, agent = stack
    with running_proxy(cp.port) as proxy:
        config = tmp_path / "agentctl.toml"
        config.write_text(
            f'url = "http://127.0.0.1:{proxy.port}"\ntoken = "{cp.admin_token}"\n', encoding="utf-8"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
        env.update({"AGENTCTL_CONFIG": str(config), "TERM": "xterm"})
        argv = [sys.executable, "-m", "fleetgate.agentctl", "websh", agent.name, "-u", user.name]
        proc = PtyProcess.spawn(argv, env=env, cwd=str(REPO_ROOT), dimensions=(24, 80))
        screen = PtyScreen(proc)
        try:
            await screen.expect(r"\$ ")
            proc.write(b"KEEP=kept-$((6*7)); echo K''=$KEEP\r")
            await screen.expect(r"K=kept-42")
            proxy.set_mode("drop")
            proxy.set_mode("pass")
            await screen.expect(r"reattaching")
            proc.write(b"echo A''=$KEEP\r")
            await screen.expect(r"A=kept-42", timeout=30)
            proc.write(b"exit 4\r")
            await screen.until_eof()
            proc.wait()
            assert proc.exitstatus == 4
        finally:
            if proc.isalive():
                proc.terminate(force=True)


async def test_agent_stop_ends_terminals_and_ships_the_recording_after_restart(
    stack: tuple[ControlPlaneProcess, AgentProcess], user: CreatedUser, tmp_path: Path
) -> None:
    """SIGTERM to the agent: the client is told, the shell is gone; the recording left in
    the spool reaches the control plane at the agent's next start."""
    cp, _ = stack
    other = start_agent(cp, tmp_path / "agent2", sections={"websh": {"hangup_grace": 1.0}})
    try:
        terminal = create_terminal(cp, other.name, user.name).json()
        async with attach(cp, terminal["id"]) as session:
            pid = int(await session.ask("echo P''=$$", r"P=(\d+)\r\n"))
            await asyncio.to_thread(other.stop)
            exit_frame = await session.reader.control("exit")
            assert exit_frame["reason"] in {"closed", "shutdown"}
            await session.reader.until_closed()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the agent reaped it before it exited
        spooled = list((other.workdir / "state" / "recordings").glob("*.cast"))
        with cp.client() as client:
            recording = client.get(f"{TERMINALS}{terminal['id']}/").json()["recording"]
        assert spooled or recording is not None  # shipped before the end, or left for later
        await asyncio.to_thread(other.start)
        await asyncio.to_thread(wait_recording, cp, terminal["id"])
    finally:
        await asyncio.to_thread(other.stop)
