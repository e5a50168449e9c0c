"""The spawner helper: commands that change identity, started from a small process.

Every security property of the in-process paths is checked here against the helper:
exact ids and groups, no capability, a clean environment, only descriptors 0-2, a
socket nobody else can reach; and its lifecycle: reaping, killing, its own death.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from fleetgate.agent.config.resources import LimitsConfig
from fleetgate.agent.exec import runner, spawn as spawn_module
from fleetgate.agent.exec.identity import BASE_PATH
from fleetgate.shared.protocol.limits import MAX_ENV_BYTES, MAX_ENV_VAR_BYTES, MAX_LINE_CHARS
from fleetgate.shared.protocol.messages import CommandRun
from tests.integration.agent.test_runner import (
    BASE_KEYS,
    SHELL_ADDED,
    Recorder,
    finish,
    wait_gone,
)
from tests.support.users import CreatedUser, processes_gone


pytestmark = pytest.mark.root

LIMITS = LimitsConfig(kill_grace=1.0)
STATUS_LINE = (
    "grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapAmb|NoNewPrivs):' /proc/self/status"
)


@pytest.fixture(autouse=True)
def fresh_spawner() -> Iterator[None]:
    """Each test starts its own helper and leaves none behind."""
    runner.close_spawner()
    yield
    runner.close_spawner()


async def run(
    line: str, user: CreatedUser, *, use_spawner: bool = True, **fields: Any
) -> tuple[Any, Recorder]:
    recorder = Recorder()
    outcome = await runner.run_command(
        CommandRun(command_id=uuid.uuid4(), line=line, username=user.name, **fields),
        LIMITS,
        on_started=recorder.on_started,
        on_output=recorder.on_output,
        use_spawner=use_spawner,
    )
    return outcome, recorder


def helper_pid() -> int:
    pid = runner._SPAWNER.helpers[0].pid
    assert pid is not None, "the spawner helper is not running"
    return pid


def read_proc(pid: int | None, name: str) -> bytes:
    return Path("/proc", str(pid) if pid is not None else "", name).read_bytes()


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


async def test_exact_ids_groups_and_no_capability(scratch_user: CreatedUser) -> None:
    """The same credentials as behind setpriv: real, effective, saved and filesystem ids
    the user's, exactly the user's groups, no capability in any set."""
    outcome, recorder = await run(STATUS_LINE, scratch_user)
    assert outcome.success, outcome
    assert runner._SPAWNER.helpers[0].pid is not None  # it did go through the helper
    fields = dict(line.split(":", 1) for line in recorder.text.splitlines())
    assert fields["Uid"].split() == [str(scratch_user.uid)] * 4
    assert fields["Gid"].split() == [str(scratch_user.gid)] * 4
    assert sorted(int(g) for g in fields["Groups"].split()) == sorted(scratch_user.groups)
    assert scratch_user.group_gid in {int(g) for g in fields["Groups"].split()}
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(fields[cap], 16) == 0, cap
    _, behind_setpriv = await run(STATUS_LINE, scratch_user, use_spawner=False)
    assert behind_setpriv.text == recorder.text


async def test_environment_is_built_not_inherited(
    scratch_user: CreatedUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_SPAWNER_SECRET", "must-not-leak")
    outcome, recorder = await run("env", scratch_user, env={"ASKED": "yes"})
    assert outcome.success, outcome
    env = dict(line.split("=", 1) for line in recorder.text.splitlines())
    assert set(env) - SHELL_ADDED == BASE_KEYS | {"ASKED"}
    assert env["PATH"] == BASE_PATH
    assert env["USER"] == scratch_user.name
    assert "must-not-leak" not in recorder.text
    # The helper itself never had the daemon's environment either.
    assert read_proc(helper_pid(), "environ") == b""


async def test_only_stdio_descriptors_reach_the_command(scratch_user: CreatedUser) -> None:
    # ls is a child of the shell: the listing is of the shell's descriptors only.
    outcome, recorder = await run("ls /proc/$$/fd", scratch_user)
    assert outcome.success, outcome
    assert recorder.text.split() == ["0", "1", "2"]


async def test_the_helper_is_reachable_only_through_its_socketpair(
    scratch_user: CreatedUser,
) -> None:
    """The helper's one socket has no filesystem (or abstract) name: it is one end of a
    socketpair the agent made, whose other end the agent alone holds (close-on-exec)."""
    await run("true", scratch_user)
    inodes = socket_inodes(helper_pid())
    assert len(inodes) == 1
    for line in read_proc(None, "net/unix").decode().splitlines()[1:]:
        parts = line.split()
        if parts[6] in inodes:
            assert len(parts) == 7, f"the helper's socket is bound to {parts[7]}"
    ours = runner._SPAWNER.helpers[0]._sock
    assert ours is not None
    assert not ours.get_inheritable()
    creds = ours.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    assert int.from_bytes(creds[:4], "little") == os.getpid()  # a pair we made


async def test_start_errors_are_precise(
    scratch_user: CreatedUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unlike behind setpriv (exit 127), a shell that cannot run is a start error."""
    monkeypatch.setattr(spawn_module, "SHELL", "/nonexistent/sh")
    outcome, recorder = await run("true", scratch_user)
    assert outcome.error_phase == "start"
    assert outcome.message is not None
    assert "No such file or directory" in outcome.message
    assert [kind for kind, _ in recorder.events] == ["started"]


async def test_exits_are_reported_and_reaped(scratch_user: CreatedUser) -> None:
    results = await asyncio.gather(
        *(run(f"exit {n}", scratch_user) for n in range(8)),
        run("kill -TERM $$", scratch_user),
    )
    assert [outcome.exit_code for outcome, _ in results] == [*range(8), 128 + 15]
    assert children_of(helper_pid()) == []  # no zombie left behind


async def test_timeout_and_cancellation_kill_the_process_group(
    scratch_user: CreatedUser,
) -> None:
    timed_out, _ = (
        await runner.run_command(
            CommandRun(
                command_id=uuid.uuid4(), line="sleep 1000", username=scratch_user.name, timeout=0.5
            ),
            LIMITS,
            on_started=Recorder().on_started,
            on_output=Recorder().on_output,
        ),
        None,
    )
    assert timed_out.error_phase == "timeout"

    recorder, printed = Recorder(), asyncio.Event()

    async def on_output(seq: int, text: str) -> None:
        await recorder.on_output(seq, text)
        printed.set()

    task = asyncio.create_task(
        runner.run_command(
            CommandRun(
                command_id=uuid.uuid4(),
                line="sleep 1000 & echo $$ $!; wait",
                username=scratch_user.name,
            ),
            LIMITS,
            on_started=recorder.on_started,
            on_output=on_output,
        )
    )
    try:
        await asyncio.wait_for(printed.wait(), 30)
        shell, background = map(int, recorder.text.split())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await finish(task)
    assert wait_gone(shell)
    assert wait_gone(background)
    assert children_of(helper_pid()) == []


async def test_a_dead_helper_kills_its_commands_and_is_restarted(
    scratch_user: CreatedUser,
) -> None:
    """Its commands' exits could no longer be known: they are killed (never left
    unsupervised, never run again); the next command starts a new helper."""
    recorder, printed = Recorder(), asyncio.Event()

    async def on_output(seq: int, text: str) -> None:
        await recorder.on_output(seq, text)
        printed.set()

    with capture_logs() as logs:
        task = asyncio.create_task(
            runner.run_command(
                CommandRun(
                    command_id=uuid.uuid4(),
                    line="sleep 1000 & echo $$ $!; wait",
                    username=scratch_user.name,
                ),
                LIMITS,
                on_started=recorder.on_started,
                on_output=on_output,
            )
        )
        try:
            await asyncio.wait_for(printed.wait(), 30)
            first = helper_pid()
            os.kill(first, signal.SIGKILL)
            outcome = await asyncio.wait_for(task, 30)
        finally:
            await finish(task)
        shell, background = map(int, recorder.text.split())
        assert outcome.exit_code == 128 + signal.SIGKILL
        assert wait_gone(shell)
        assert wait_gone(background)
        assert wait_gone(first)
        again, _ = await run("true", scratch_user)
        assert again.success, again
        assert helper_pid() != first
    events = [(e["event"], e) for e in logs]
    lost = [e for name, e in events if name == "exec.spawner_lost"]
    assert lost
    assert lost[0]["killed"] == 1
    assert any(name == "exec.spawner_started" and e["restarted"] for name, e in events)


async def test_the_largest_command_crosses_the_socket_whole(scratch_user: CreatedUser) -> None:
    """A line and an environment at the protocol's limits: a request far larger than the
    socket's buffer, sent in parts, arrives whole (several at once, interleaved)."""
    size = MAX_ENV_VAR_BYTES - len("BIG_0=")
    env = {f"BIG_{i}": str(i) * size for i in range(MAX_ENV_BYTES // MAX_ENV_VAR_BYTES)}
    line = 'printf "%s\\n" "${#BIG_0} ${#BIG_6} $(echo ${BIG_3} | cut -c1-3)"; : ' + "x" * (
        MAX_LINE_CHARS - 80
    )
    assert len(line) <= MAX_LINE_CHARS
    results = await asyncio.gather(*(run(line, scratch_user, env=env) for _ in range(3)))
    for outcome, recorder in results:
        assert outcome.success, outcome
        assert recorder.text == f"{size} {size} 333\n"


async def test_a_start_cancelled_before_its_pid_came_is_killed(scratch_user: CreatedUser) -> None:
    """The caller is cancelled while the helper is still starting the command: the process
    it then reports has no owner, so it is killed at once instead of left running."""
    warm, _ = await run("true", scratch_user)  # the identity is cached, the helper runs
    assert warm.success, warm
    for _ in range(3):
        task = asyncio.create_task(run("sleep 1000", scratch_user))
        await asyncio.sleep(0)  # the request is sent; the pid is not back yet
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await asyncio.to_thread(processes_gone, scratch_user.uid, 10.0)
    outcome, _ = await run("true", scratch_user)  # the helper still answers
    assert outcome.success, outcome


AGENT_SCRIPT = """
import asyncio, sys, uuid
from fleetgate.agent.config.resources import LimitsConfig
from fleetgate.agent.exec import runner
from fleetgate.shared.protocol.messages import CommandRun

async def main() -> None:
    async def ignore(*_: object) -> None: ...
    run = CommandRun(command_id=uuid.uuid4(), line="true", username=sys.argv[1])
    await runner.run_command(run, LimitsConfig(), on_started=ignore, on_output=ignore)
    print("HELPER", runner._SPAWNER.helpers[0].pid, flush=True)
    await asyncio.sleep(3600)  # until SIGKILLed

asyncio.run(main())
"""


async def test_the_helper_ends_with_a_killed_agent(scratch_user: CreatedUser) -> None:
    """SIGKILL leaves the agent no chance to stop its helper: end of file does."""
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT_SCRIPT, scratch_user.name, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert agent.stdout is not None
        line = b""
        while not line.startswith(b"HELPER "):  # after the agent's own log lines
            line = await asyncio.wait_for(agent.stdout.readline(), 30)
            assert line, "the agent ended early"
        helper = int(line.split()[1])
    finally:
        agent.kill()
        await agent.wait()
    assert await asyncio.to_thread(wait_gone, helper)
