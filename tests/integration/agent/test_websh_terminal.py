"""Terminals driven directly through the TerminalManager: real PTYs, real users, an
in-memory link playing the client."""

from __future__ import annotations

import asyncio
import json
import os
import termios
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from fleetgate.agent.config import AgentConfig, parse
from fleetgate.agent.errors import ChannelRefused
from fleetgate.agent.websh.manager import TerminalManager, TerminalRequest
from fleetgate.agent.websh.reaper import session_members
from fleetgate.agent.websh.shell import ShellProcess, spawn_shell
from tests.support.users import CreatedUser
from tests.support.waiting import eventually
from tests.support.websh import FakeLink, TerminalReader


pytestmark = pytest.mark.timeout(60)


def make_config(tmp_path: Path, **websh: Any) -> AgentConfig:
    return parse(
        {
            "control_plane": {"url": "http://127.0.0.1:1"},
            "identity": {"server_id": str(uuid.uuid4()), "key_file": str(tmp_path / "key")},
            "state_dir": str(tmp_path / "state"),
            "websh": {"detach_grace": 10.0, "hangup_grace": 1.0, **websh},
        }
    )


@asynccontextmanager
async def manager_running(config: AgentConfig, **hooks: Any) -> AsyncIterator[TerminalManager]:
    manager = TerminalManager(config, **hooks)
    task = asyncio.create_task(manager.run())
    await asyncio.sleep(0)
    try:
        yield manager
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@asynccontextmanager
async def attached(
    manager: TerminalManager, request: TerminalRequest
) -> AsyncIterator[tuple[FakeLink, TerminalReader, asyncio.Task[None]]]:
    link = FakeLink()
    reader = TerminalReader(link)
    task = asyncio.create_task(manager.serve(request, link, None))
    try:
        ready = await reader.control("ready")
        assert ready["terminal_id"] == str(request.terminal_id)
        yield link, reader, task
    finally:
        if not task.done():
            link.drop()
        await asyncio.gather(task, return_exceptions=True)


async def prompt(reader: TerminalReader, link: FakeLink, line: str, pattern: str) -> str:
    """Type a line and wait for a marker-delimited answer."""
    link.to_agent.put_nowait(line.encode() + b"\n")
    return (await reader.expect(pattern)).group(1)


@pytest.mark.root
async def test_echo_id_resize_and_exit(tmp_path: Path, scratch_user: CreatedUser) -> None:
    """Typing reaches the shell, the shell is the user's login shell, resize shows in
    stty size, and exiting the shell closes the channel with its exit code."""
    config = make_config(tmp_path)
    started: list[tuple[int, object, uuid.UUID]] = []
    ended: list[int] = []
    async with manager_running(
        config,
        on_shell_started=lambda pid, claims, tid: started.append((pid, claims, tid)),
        on_shell_ended=ended.append,
    ) as manager:
        request = TerminalRequest(uuid.uuid4(), username=scratch_user.name, rows=24, cols=80)
        async with attached(manager, request) as (link, reader, task):
            assert await prompt(reader, link, "echo h''i-$((40+2))", r"(hi-42)\r\n") == "hi-42"
            who = await prompt(
                reader, link, "echo U''=$(id -un):$(id -u):$(id -G)", r"U=(\w+:\d+:[\d ]+)\r\n"
            )
            groups = " ".join(str(g) for g in scratch_user.groups)
            assert who == f"{scratch_user.name}:{scratch_user.uid}:{groups}"
            env = await prompt(
                reader, link, 'echo E""=$HOME:$PWD:$USER:$TERM:"$0"', r"E=(/\S+)\r\n"
            )
            assert (
                env
                == f"{scratch_user.home}:{scratch_user.home}:{scratch_user.name}:xterm-256color:-sh"
            )
            link.to_agent.put_nowait(json.dumps({"type": "resize", "rows": 33, "cols": 101}))
            assert (
                await prompt(reader, link, "echo S''=$(stty size)", r"S=(\d+ \d+)\r\n") == "33 101"
            )
            # A controlling terminal: the shell is the session leader, tty works.
            tty = await prompt(reader, link, "echo T''=$(tty)", r"T=(\S+)\r\n")
            assert tty.startswith("/dev/pts/")
            assert started
            assert started[0][2] == request.terminal_id
            pid = started[0][0]
            assert os.getsid(pid) == pid
            link.to_agent.put_nowait(b"exit 7\n")
            exit_frame = await reader.control("exit")
            assert exit_frame == {"type": "exit", "code": 7, "reason": "exited"}
            await reader.until_closed()
            assert link.closed == (1000, "exited")
            await asyncio.wait_for(task, 10)
        await eventually(lambda: ended == [pid])
        assert request.terminal_id not in manager.terminals


@pytest.mark.root
async def test_reattach_keeps_the_shell(tmp_path: Path, scratch_user: CreatedUser) -> None:
    """Dropping the link detaches; a reattach finds the same shell with its variables and
    gets the output printed meanwhile replayed."""
    config = make_config(tmp_path)
    async with manager_running(config) as manager:
        tid = uuid.uuid4()
        request = TerminalRequest(tid, username=scratch_user.name)
        async with attached(manager, request) as (link, reader, task):
            await prompt(reader, link, "MARK=kept-$((6*7)); echo set-$MARK", r"(set-kept-42)\r\n")
            link.to_agent.put_nowait(b"sleep 0.3; echo while-away\n")
            link.drop()
            await asyncio.wait_for(task, 10)
        assert tid in manager.terminals
        again = TerminalRequest(tid, username=scratch_user.name, attach=True)
        async with attached(manager, again) as (link2, reader2, _):
            await reader2.expect(r"while-away\r\n")
            assert await prompt(reader2, link2, "echo again-$MARK", r"(again-kept-42)\r\n")
            link2.to_agent.put_nowait(json.dumps({"type": "close"}))
            exit_frame = await reader2.control("exit")
            assert exit_frame["reason"] == "closed"


@pytest.mark.root
async def test_reattach_by_another_user_is_refused(
    tmp_path: Path, make_user: Callable[[], CreatedUser]
) -> None:
    owner, other = make_user(), make_user()
    config = make_config(tmp_path)
    async with manager_running(config) as manager:
        tid = uuid.uuid4()
        async with attached(manager, TerminalRequest(tid, username=owner.name)) as (link, _, _):
            with pytest.raises(ChannelRefused) as refused:
                await manager.serve(
                    TerminalRequest(tid, username=other.name, attach=True), FakeLink(), None
                )
            assert refused.value.code == "forbidden"
            with pytest.raises(ChannelRefused) as unknown:
                await manager.serve(
                    TerminalRequest(uuid.uuid4(), username=owner.name, attach=True),
                    FakeLink(),
                    None,
                )
            assert unknown.value.code == "unknown_terminal"
            link.to_agent.put_nowait(json.dumps({"type": "close"}))


@pytest.mark.root
async def test_detach_grace_expiry_ends_the_session(
    tmp_path: Path, scratch_user: CreatedUser
) -> None:
    """After the grace the whole session (background jobs too) is hung up and reaped."""
    config = make_config(tmp_path, detach_grace=0.5)
    pids: list[int] = []
    async with manager_running(
        config, on_shell_started=lambda pid, c, t: pids.append(pid)
    ) as manager:
        tid = uuid.uuid4()
        async with attached(manager, TerminalRequest(tid, username=scratch_user.name)) as (
            link,
            reader,
            task,
        ):
            await prompt(reader, link, "sleep 1000 & echo bg-$!", r"(bg-\d+)\r\n")
            link.drop()
            await asyncio.wait_for(task, 10)
        await eventually(lambda: tid not in manager.terminals)
        assert session_members(pids[0]) == []


@pytest.mark.root
async def test_bad_control_frames_get_an_error_and_change_nothing(
    tmp_path: Path, scratch_user: CreatedUser
) -> None:
    config = make_config(tmp_path)
    async with manager_running(config) as manager:
        request = TerminalRequest(uuid.uuid4(), username=scratch_user.name)
        async with attached(manager, request) as (link, reader, _):
            for bad in (
                "{",
                "[]",
                '{"type":"nope"}',
                '{"type":"resize","rows":0,"cols":5}',
                '{"type":"resize","rows":9999,"cols":5}',
                "x" * 5000,
            ):
                link.to_agent.put_nowait(bad)
                error = await reader.control("error")
                assert error["code"] in {"malformed", "unknown_type", "invalid", "too_large"}
            assert (
                await prompt(reader, link, "echo S''=$(stty size)", r"S=(\d+ \d+)\r\n") == "24 80"
            )
            link.to_agent.put_nowait(b"exit\n")
            await reader.control("exit")


@pytest.mark.root
async def test_unknown_user_and_unlisted_shell_are_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with manager_running(config) as manager:
        with pytest.raises(ChannelRefused) as refused:
            await manager.serve(
                TerminalRequest(uuid.uuid4(), username="no-such-user-x"), FakeLink(), None
            )
        assert refused.value.code == "unknown_user"
        with pytest.raises(ChannelRefused) as shell:
            await manager.serve(
                TerminalRequest(uuid.uuid4(), username="root", shell="/usr/bin/python3"),
                FakeLink(),
                None,
            )
        assert shell.value.code == "invalid_shell"
        assert manager.terminals == {}


@pytest.mark.root
async def test_slow_client_bounds_memory(tmp_path: Path, scratch_user: CreatedUser) -> None:
    """A client that does not read: the agent stops reading the PTY and the writer blocks."""
    config = make_config(tmp_path)
    async with manager_running(config) as manager:
        request = TerminalRequest(uuid.uuid4(), username=scratch_user.name)
        link = FakeLink(send_limit=4)
        reader = TerminalReader(link)
        task = asyncio.create_task(manager.serve(request, link, None))
        await reader.control("ready")
        await reader.expect(r"\$ ")
        link.to_agent.put_nowait(b"head -c 50000000 /dev/zero | tr '\\0' x; echo do''ne\n")
        await reader.expect(r"do''ne\r\n")
        terminal = manager.terminals[request.terminal_id]
        # Let the writer fill every buffer; the agent holds at most the high-water mark
        # plus one read budget, and the sender at most `send_limit` frames.
        for _ in range(50):
            await asyncio.sleep(0.02)
            assert len(terminal._pending) <= 512 * 1024
        total, tail = 0, b""
        while True:
            item = await asyncio.wait_for(link.from_agent.get(), 10)
            assert isinstance(item, bytes)
            total += len(item)
            tail = (tail + item)[-64:]
            if b"done\r\n" in tail:
                break
            assert len(terminal._pending) <= 512 * 1024
        assert total >= 50_000_000
        link.to_agent.put_nowait(json.dumps({"type": "close"}))
        await asyncio.wait_for(task, 20)


def read_cast(path: Path) -> tuple[dict[str, Any], list[list[Any]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


@pytest.mark.root
async def test_recording_is_asciicast_and_hides_passwords(
    tmp_path: Path, scratch_user: CreatedUser
) -> None:
    """Output, input and resize are recorded in order; what is typed at a prompt that does
    not echo (a password) is recorded as stars."""
    config = make_config(tmp_path)
    done: list[tuple[uuid.UUID, Path]] = []
    async with manager_running(config) as manager:
        manager.on_recording_done = lambda tid, path: done.append((tid, path))
        request = TerminalRequest(uuid.uuid4(), username=scratch_user.name, rows=20, cols=70)
        async with attached(manager, request) as (link, reader, task):
            path = config.recordings_dir / f"{request.terminal_id}.cast"
            assert path.stat().st_mode & 0o777 == 0o600
            await prompt(reader, link, "echo €-$((1+1))", r"(€-2)\r\n")
            link.to_agent.put_nowait(json.dumps({"type": "resize", "rows": 21, "cols": 71}))
            link.to_agent.put_nowait(b"stty -echo; read pw; stty echo; echo L''=${#pw}\n")
            fd = manager.terminals[request.terminal_id].shell.master_fd
            # Type the password once the prompt has turned echo off, as a person would.
            await eventually(lambda: not termios.tcgetattr(fd)[3] & termios.ECHO)
            link.to_agent.put_nowait(b"hunter2\n")
            assert (await reader.expect(r"L=(\d+)\r\n")).group(1) == "7"
            link.to_agent.put_nowait(b"exit\n")
            await reader.control("exit")
            await asyncio.wait_for(task, 10)
        await eventually(lambda: len(done) == 1)
    assert done[0] == (request.terminal_id, path)
    header, events = read_cast(path)
    assert header["version"] == 2
    assert (header["width"], header["height"]) == (70, 20)
    assert header["env"] == {"SHELL": "/bin/sh", "TERM": "xterm-256color"}
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    typed = "".join(e[2] for e in events if e[1] == "i")
    output = "".join(e[2] for e in events if e[1] == "o")
    assert "€-2" in output
    assert "hunter2" not in typed + output
    assert "*******\n" in typed
    assert [21, 71] == [int(x) for x in next(e[2] for e in events if e[1] == "r").split("x")][::-1]


@pytest.mark.root
async def test_bulk_output_is_recorded_byte_for_byte(
    tmp_path: Path, scratch_user: CreatedUser
) -> None:
    """A bulk writer (many PTY reads, several read budgets and frames): the recording's
    output events, joined, are exactly the bytes the client received, in order."""
    config = make_config(tmp_path)
    done: list[tuple[uuid.UUID, Path]] = []
    async with manager_running(config) as manager:
        manager.on_recording_done = lambda tid, path: done.append((tid, path))
        request = TerminalRequest(uuid.uuid4(), username=scratch_user.name)
        async with attached(manager, request) as (link, _reader, task):
            path = config.recordings_dir / f"{request.terminal_id}.cast"
            link.to_agent.put_nowait(b"head -c 3000000 /dev/zero | tr '\\0' x; seq 1 20000; exit\n")
            received = bytearray()
            while True:
                item = await asyncio.wait_for(link.from_agent.get(), 20)
                assert item is not None, "the link closed before the exit frame"
                if isinstance(item, bytes):
                    received += item
                elif json.loads(item)["type"] == "exit":
                    break
            await asyncio.wait_for(task, 10)
        await eventually(lambda: len(done) == 1)
    _, events = read_cast(path)
    recorded = "".join(e[2] for e in events if e[1] == "o")
    assert recorded == received.decode()
    assert "x" * 3_000_000 in recorded
    assert "\r\n20000\r\n" in recorded


@pytest.mark.parametrize("policy", ["stop", "refuse"])
@pytest.mark.root
async def test_a_full_recording_spool_follows_the_policy(
    tmp_path: Path, scratch_user: CreatedUser, policy: str
) -> None:
    """`stop`: the session goes on unrecorded; `refuse`: it is ended, new ones refused."""
    config = make_config(tmp_path, recording_max_bytes=4096, recording_full=policy)
    async with manager_running(config) as manager:
        request = TerminalRequest(uuid.uuid4(), username=scratch_user.name)
        async with attached(manager, request) as (link, reader, task):
            link.to_agent.put_nowait(b"head -c 20000 /dev/zero | tr '\\0' y; echo; echo E''=end\n")
            if policy == "stop":
                await reader.expect(r"E=end\r\n")
                assert await prompt(reader, link, "echo S''=still", r"S=(still)\r\n") == "still"
                link.to_agent.put_nowait(b"exit\n")
                await reader.control("exit")
            else:
                exit_frame = await reader.control("exit")
                assert exit_frame["reason"] == "recording_full"
            await asyncio.wait_for(task, 10)
        path = config.recordings_dir / f"{request.terminal_id}.cast"
        assert path.stat().st_size <= 4096
        read_cast(path)  # still valid: it ends early, never mid-line
        if policy == "refuse":
            with pytest.raises(ChannelRefused) as refused:
                await manager.serve(
                    TerminalRequest(uuid.uuid4(), username=scratch_user.name), FakeLink(), None
                )
            assert refused.value.code == "recording_unavailable"


class _HeldSpawn:
    """``spawn_shell`` that signals when it starts and waits to be released, so a test
    can cancel the opener while the fork is in progress (the real spawn then runs)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.entered = asyncio.Event()
        self.release = threading.Event()
        self.pids: list[int] = []

    def __call__(self, *args: Any) -> ShellProcess:
        self.loop.call_soon_threadsafe(self.entered.set)
        self.release.wait(30)
        shell = spawn_shell(*args)
        self.pids.append(shell.pid)
        return shell


def _gone(pid: int) -> bool:
    """The shell and everything in its session are gone, and the shell is reaped."""
    return not session_members(pid) and not Path(f"/proc/{pid}").exists()


@pytest.mark.root
@pytest.mark.parametrize("stop_manager", [False, True], ids=["opener", "opener-and-agent"])
async def test_cancelled_open_leaves_no_shell(
    tmp_path: Path,
    scratch_user: CreatedUser,
    monkeypatch: pytest.MonkeyPatch,
    stop_manager: bool,
) -> None:
    """Cancelling an open while the shell is being forked (and, worse, stopping the agent
    at the same moment) ends and reaps the login shell the fork starts."""
    held = _HeldSpawn(asyncio.get_running_loop())
    monkeypatch.setattr("fleetgate.agent.websh.manager.spawn_shell", held)
    manager = TerminalManager(make_config(tmp_path))
    run = asyncio.create_task(manager.run())
    await asyncio.sleep(0)
    request = TerminalRequest(uuid.uuid4(), username=scratch_user.name, rows=24, cols=80)
    opener = asyncio.create_task(manager.serve(request, FakeLink(), None))
    await asyncio.wait_for(held.entered.wait(), 10)
    opener.cancel()
    if stop_manager:
        run.cancel()
    held.release.set()
    with pytest.raises(asyncio.CancelledError):
        await opener
    if not stop_manager:
        await eventually(lambda: bool(held.pids) and _gone(held.pids[0]))
        run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await eventually(lambda: bool(held.pids) and _gone(held.pids[0]))
    assert manager.terminals == {}


@pytest.mark.root
async def test_a_terminal_asked_for_before_the_manager_runs_waits_for_it(
    tmp_path: Path, scratch_user: CreatedUser
) -> None:
    """A pre-dialled channel can ask for the first terminal in the step that builds the
    service, before the manager's run() first runs: it waits for it, not refused as if
    the agent were shutting down (seen once in the suite)."""
    manager = TerminalManager(make_config(tmp_path))
    request = TerminalRequest(uuid.uuid4(), username=scratch_user.name, rows=24, cols=80)
    link = FakeLink()
    serve = asyncio.create_task(manager.serve(request, link, None))
    await asyncio.sleep(0)  # the request is there before the owner runs
    run = asyncio.create_task(manager.run())
    ready = await TerminalReader(link).control("ready")
    assert ready["terminal_id"] == str(request.terminal_id)
    link.drop()
    await asyncio.gather(serve, return_exceptions=True)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    # Once run() has ended, the agent is shutting down: refused at once.
    late = TerminalRequest(uuid.uuid4(), username=scratch_user.name, rows=24, cols=80)
    with pytest.raises(ChannelRefused, match="not serving terminals"):
        await asyncio.wait_for(manager.serve(late, FakeLink(), None), 1)
