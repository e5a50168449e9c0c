"""run_command against real subprocesses.

Tests marked ``root`` create users and switch identities; the others run commands as
the account the suite runs as.
"""

from __future__ import annotations

import asyncio
import errno
import os
import pwd
import select
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleetgate.agent.config.resources import LimitsConfig
from fleetgate.agent.exec import (
    CommandOutcome,
    pump as pump_module,
    run_command,
    spawn as spawn_module,
)
from fleetgate.agent.exec.identity import BASE_PATH
from fleetgate.agent.exec.spawn import find_setpriv
from fleetgate.agent.exec.stopping import StopRequest
from fleetgate.shared.protocol.messages import CommandRun
from tests.support.users import CreatedUser


ME = pwd.getpwuid(os.geteuid()).pw_name
LIMITS = LimitsConfig(kill_grace=1.0)
SENTINEL = "FLEET_AGENT_TEST_SENTINEL"
# Variables /bin/sh may add on its own on top of the ones the agent sets.
SHELL_ADDED = {"PWD", "OLDPWD", "SHLVL", "_"}
BASE_KEYS = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG"}


class Recorder:
    """Collects the callbacks of one run, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.chunks: list[tuple[int, str]] = []

    async def on_started(self, acked_at: object) -> None:
        self.events.append(("started", acked_at))

    async def on_output(self, seq: int, text: str) -> None:
        self.events.append(("output", seq))
        self.chunks.append((seq, text))

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.chunks)


def command(line: str, **fields: Any) -> CommandRun:
    fields.setdefault("username", ME)
    return CommandRun(command_id=uuid.uuid4(), line=line, **fields)


async def run(
    line: str,
    limits: LimitsConfig = LIMITS,
    *,
    use_setpriv: bool = True,
    use_spawner: bool = True,
    **fields: Any,
) -> tuple[CommandOutcome, Recorder]:
    recorder = Recorder()
    outcome = await run_command(
        command(line, **fields),
        limits,
        on_started=recorder.on_started,
        on_output=recorder.on_output,
        use_setpriv=use_setpriv,
        use_spawner=use_spawner,
    )
    return outcome, recorder


def is_gone(pid: int) -> bool:
    """True if the process does not exist or is a zombie (dead, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Wait until ``pid`` has terminated (a SIGKILL is delivered asynchronously)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        # A pidfd becomes readable when the process terminates.
        readable, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    return bool(readable) and is_gone(pid)


async def finish(task: asyncio.Task[CommandOutcome]) -> None:
    """Cancel a run a failed test left behind, so its process tree is stopped."""
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def assert_started_first(recorder: Recorder) -> None:
    kinds = [kind for kind, _ in recorder.events]
    assert kinds.count("started") == 1
    assert kinds[0] == "started"


# -- identity and environment ----------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize(
    ("use_spawner", "use_setpriv"),
    [(True, False), (False, True), (False, False)],
    ids=["spawner", "setpriv", "stdlib"],
)
async def test_runs_with_the_users_ids(
    scratch_user: CreatedUser, use_spawner: bool, use_setpriv: bool
) -> None:
    """Real, effective, saved and filesystem ids are the user's; no capability is left."""
    if use_setpriv and find_setpriv() is None:
        pytest.skip("util-linux setpriv is not installed")
    outcome, recorder = await run(
        "id -u; id -g; id -G; grep -E '^(Uid|Gid|CapPrm|CapEff):' /proc/self/status",
        username=scratch_user.name,
        use_setpriv=use_setpriv,
        use_spawner=use_spawner,
    )
    assert outcome.success, outcome
    uid, gid, groups, uids, gids, cap_prm, cap_eff = recorder.text.splitlines()
    assert int(uid) == scratch_user.uid
    assert int(gid) == scratch_user.gid
    listed = [int(g) for g in groups.split()]
    assert listed[0] == scratch_user.gid
    assert sorted(listed) == sorted(scratch_user.groups)
    assert uids.split()[1:] == [str(scratch_user.uid)] * 4
    assert gids.split()[1:] == [str(scratch_user.gid)] * 4
    assert int(cap_prm.split()[1], 16) == 0
    assert int(cap_eff.split()[1], 16) == 0


@pytest.mark.root
async def test_requested_group_becomes_primary(scratch_user: CreatedUser) -> None:
    outcome, recorder = await run(
        "id -g; id -G", username=scratch_user.name, groupname=scratch_user.group_name
    )
    assert outcome.success, outcome
    gid, groups = recorder.text.splitlines()
    assert int(gid) == scratch_user.group_gid
    assert sorted(int(g) for g in groups.split()) == sorted(scratch_user.groups)


@pytest.mark.root
async def test_clean_environment_and_home_directory(
    scratch_user: CreatedUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SENTINEL, "must-not-leak")
    outcome, recorder = await run("env", username=scratch_user.name)
    assert outcome.success, outcome
    env = dict(line.split("=", 1) for line in recorder.text.splitlines())
    assert SENTINEL not in env
    assert set(env) <= BASE_KEYS | SHELL_ADDED
    assert {key: env[key] for key in BASE_KEYS} == {
        "PATH": BASE_PATH,
        "HOME": scratch_user.home,
        "USER": scratch_user.name,
        "LOGNAME": scratch_user.name,
        "SHELL": "/bin/sh",
        "LANG": "C.UTF-8",
    }

    outcome, recorder = await run("pwd", username=scratch_user.name)
    assert recorder.text == scratch_user.home + "\n"


@pytest.mark.root
async def test_missing_home_runs_in_root_directory(scratch_user: CreatedUser) -> None:
    os.rename(scratch_user.home, scratch_user.home + ".moved")
    try:
        outcome, recorder = await run("pwd", username=scratch_user.name)
    finally:
        os.rename(scratch_user.home + ".moved", scratch_user.home)
    assert outcome.success, outcome
    assert recorder.text == "/\n"


async def test_requested_variables_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SENTINEL, "must-not-leak")
    outcome, recorder = await run(
        f'printf "%s|%s|%s" "$DEPLOY_ENV" "$LANG" "${{{SENTINEL}:-unset}}"',
        env={"DEPLOY_ENV": "prod one", "LANG": "de_DE.UTF-8"},
    )
    assert outcome.success, outcome
    assert recorder.text == "prod one|de_DE.UTF-8|unset"


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.root
async def test_group_the_user_is_not_in_is_refused(
    make_user: Callable[[], CreatedUser],
) -> None:
    alice, bob = make_user(), make_user()
    outcome, recorder = await run("id", username=alice.name, groupname=bob.group_name)
    assert outcome.error_phase == "start"
    assert outcome.exit_code == 1
    assert not outcome.success
    assert outcome.message == f"user {alice.name!r} is not a member of group {bob.group_name!r}"
    assert outcome.result == ""
    assert [kind for kind, _ in recorder.events] == ["started"]


async def test_unknown_user_is_refused() -> None:
    outcome, recorder = await run("echo never", username="nosuch" + uuid.uuid4().hex[:8])
    assert outcome.error_phase == "start"
    assert outcome.exit_code == 1
    assert outcome.message is not None
    assert outcome.message.startswith("unknown user 'nosuch")
    assert (outcome.result, outcome.output_bytes, outcome.elapsed_time) == ("", 0, 0.0)
    assert [kind for kind, _ in recorder.events] == ["started"]
    assert recorder.events[0][1] == outcome.acked_at
    assert outcome.acked_at <= outcome.handled_at


async def test_exec_failure_is_a_start_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spawn_module, "SHELL", "/nonexistent/sh")
    outcome, recorder = await run("true", use_setpriv=False)
    assert outcome.error_phase == "start"
    assert outcome.exit_code == 1
    assert outcome.message is not None
    assert "No such file or directory" in outcome.message
    assert [kind for kind, _ in recorder.events] == ["started"]


@pytest.mark.root
async def test_exec_failure_behind_setpriv_is_its_exit_127(
    monkeypatch: pytest.MonkeyPatch, scratch_user: CreatedUser
) -> None:
    """Behind setpriv the shell's exec fails in setpriv: exit 127 with its message."""
    if find_setpriv() is None:
        pytest.skip("util-linux setpriv is not installed")
    monkeypatch.setattr(spawn_module, "SHELL", "/nonexistent/sh")
    outcome, recorder = await run("true", username=scratch_user.name, use_spawner=False)
    assert outcome.exit_code == 127
    assert "/nonexistent/sh" in recorder.text


# -- exit status ---------------------------------------------------------------------------


async def test_exit_code_is_reported() -> None:
    outcome, recorder = await run("echo out; echo err >&2; exit 7")
    assert outcome.exit_code == 7
    assert not outcome.success
    assert (outcome.error_phase, outcome.message) == (None, None)
    assert recorder.text == "out\nerr\n"
    assert (outcome.result, outcome.truncated, outcome.output_bytes) == ("out\nerr\n", False, 8)
    assert_started_first(recorder)


async def test_success() -> None:
    outcome, _ = await run("true")
    assert outcome.success
    assert outcome.exit_code == 0


async def test_killed_by_signal() -> None:
    outcome, _ = await run("kill -KILL $$")
    assert outcome.exit_code == 128 + 9
    assert outcome.message == "killed by signal SIGKILL"
    assert outcome.error_phase is None
    assert not outcome.success


async def test_timestamps_are_consistent() -> None:
    outcome, recorder = await run("sleep 0.3")
    assert outcome.acked_at <= outcome.handled_at
    assert recorder.events == [("started", outcome.acked_at)]
    wall = (outcome.handled_at - outcome.acked_at).total_seconds()
    assert abs(outcome.elapsed_time - wall) < 0.05
    # The clock starts once spawn returns, a moment after the child began sleeping.
    assert outcome.elapsed_time >= 0.25


# -- process tree ----------------------------------------------------------------------


async def test_timeout_kills_the_whole_tree(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    outcome, _ = await run(f"sleep 1000 & echo $$ $! > {pids}; sleep 1000", timeout=1)
    assert outcome.exit_code == 124
    assert outcome.error_phase == "timeout"
    assert outcome.message is not None
    assert outcome.message.startswith("timed out after ")
    assert 1.0 <= float(outcome.message.split()[3]) < 5.0
    assert not outcome.success
    assert outcome.elapsed_time >= 1.0
    for pid in map(int, pids.read_text().split()):
        assert wait_gone(pid), f"process {pid} survived the timeout"


async def test_timeout_escalates_to_sigkill() -> None:
    limits = LimitsConfig(kill_grace=0.5)
    started = time.monotonic()
    outcome, _ = await run("trap '' TERM; echo ready; sleep 1000", limits, timeout=1)
    assert outcome.exit_code == 124
    assert outcome.error_phase == "timeout"
    assert outcome.elapsed_time >= 1.5  # timeout + grace: SIGTERM was ignored
    assert time.monotonic() - started < 30


async def test_background_jobs_do_not_outlive_the_command() -> None:
    started = time.monotonic()
    outcome, recorder = await run("sleep 1000 & echo $!")
    took = time.monotonic() - started
    assert outcome.success
    assert wait_gone(int(recorder.text)), "the background job survived"
    # Killed right at the exit, the job closed the pipe: no wait for the drain timeout.
    assert took < pump_module.DRAIN_TIMEOUT


async def test_escaped_grandchild_does_not_hold_the_command(tmp_path: Path) -> None:
    pidfile = tmp_path / "escaped"
    # The main shell waits until the grandchild has left the process group (so the
    # kill after the exit cannot reach it) and still holds the pipe.
    line = (
        f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 1000' & "
        f"while [ ! -s {pidfile} ]; do sleep 0.01; done; echo done"
    )
    started = time.monotonic()
    try:
        outcome, recorder = await run(line)
        took = time.monotonic() - started
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), 9)
    assert outcome.success
    assert recorder.text == "done\n"
    assert outcome.elapsed_time < 5
    # The pipe is given up DRAIN_TIMEOUT (2 s) after the exit.
    assert pump_module.DRAIN_TIMEOUT <= took < 15


async def test_cancellation_kills_the_process_group() -> None:
    recorder = Recorder()
    printed = asyncio.Event()

    async def on_output(seq: int, text: str) -> None:
        await recorder.on_output(seq, text)
        printed.set()

    task = asyncio.create_task(
        run_command(
            command("sleep 1000 & echo $$ $!; wait"),
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


async def test_a_stop_request_stops_the_whole_tree_and_says_why() -> None:
    recorder = Recorder()
    printed = asyncio.Event()
    stop = StopRequest()

    async def on_output(seq: int, text: str) -> None:
        await recorder.on_output(seq, text)
        printed.set()

    task = asyncio.create_task(
        run_command(
            command("sleep 1000 & echo $$ $!; wait"),
            LIMITS,
            on_started=recorder.on_started,
            on_output=on_output,
            stop=stop,
        )
    )
    try:
        await asyncio.wait_for(printed.wait(), 30)
        shell, background = map(int, recorder.text.split())
        stop.stop("stopped: its work session ws-1 ended (revoked)")
        outcome = await asyncio.wait_for(task, 30)
    finally:
        await finish(task)
    assert outcome.error_phase == "stopped"
    assert outcome.code == "work_session_ended"
    assert outcome.message == "stopped: its work session ws-1 ended (revoked)"
    assert outcome.exit_code == 128 + 15  # SIGTERM, as at a timeout
    assert not outcome.success
    assert wait_gone(shell)
    assert wait_gone(background)


async def test_a_command_that_ends_on_its_own_is_not_reported_stopped() -> None:
    stop = StopRequest()
    recorder = Recorder()
    outcome = await run_command(
        command("echo done"),
        LIMITS,
        on_started=recorder.on_started,
        on_output=recorder.on_output,
        stop=stop,
    )
    stop.stop("too late")
    assert outcome.success
    assert (outcome.error_phase, outcome.code) == (None, None)
    # Asked before the start: stopped at once, never left running.
    started = time.monotonic()
    early = StopRequest()
    early.stop("ended before the start")
    outcome = await run_command(
        command("sleep 1000"),
        LIMITS,
        on_started=recorder.on_started,
        on_output=recorder.on_output,
        stop=early,
    )
    assert (outcome.error_phase, outcome.message) == ("stopped", "ended before the start")
    assert time.monotonic() - started < 15


# -- output --------------------------------------------------------------------------------


FIVE_MIB = 5 * 1024 * 1024
GENERATOR = (
    "import sys\n"
    "data = b''.join(b'%08d varied output line\\n' % i for i in range(300000))\n"
    f"sys.stdout.buffer.write(data[:{FIVE_MIB}])\n"
)


def expected_generator_output() -> bytes:
    data = b"".join(b"%08d varied output line\n" % i for i in range(300000))
    return data[:FIVE_MIB]


async def test_large_output_arrives_complete_and_result_is_capped() -> None:
    expected = expected_generator_output()
    assert len(expected) == FIVE_MIB
    line = f"{shlex.quote(sys.executable)} -c {shlex.quote(GENERATOR)}"
    outcome, recorder = await run(line)
    assert outcome.success, outcome

    assert [seq for seq, _ in recorder.chunks] == list(range(len(recorder.chunks)))
    assert all(len(text.encode()) <= LIMITS.output_chunk_bytes + 3 for _, text in recorder.chunks)
    assert recorder.text.encode() == expected
    assert_started_first(recorder)

    half = LIMITS.result_cap_bytes // 2
    marker = f"\n... [{FIVE_MIB - 2 * half} bytes truncated] ...\n"
    assert outcome.truncated
    assert outcome.output_bytes == FIVE_MIB
    assert outcome.result == expected[:half].decode() + marker + expected[-half:].decode()


async def test_partial_output_is_flushed_while_the_command_runs(tmp_path: Path) -> None:
    got_partial = asyncio.Event()
    recorder = Recorder()

    async def on_output(seq: int, text: str) -> None:
        await recorder.on_output(seq, text)
        got_partial.set()

    # The command waits for the test, so the chunk can only come from the flush timer.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    task = asyncio.create_task(
        run_command(
            command(f"echo partial; read x < {fifo}; echo after"),
            LIMITS,
            on_started=recorder.on_started,
            on_output=on_output,
        )
    )
    try:
        await asyncio.wait_for(got_partial.wait(), 30)
        assert recorder.text == "partial\n"
        assert not task.done()
        # Opening the FIFO for writing releases the command's read.
        writer = await asyncio.to_thread(os.open, fifo, os.O_WRONLY)
        os.write(writer, b"go\n")
        os.close(writer)
        outcome = await asyncio.wait_for(task, 30)
    finally:
        await finish(task)
    assert outcome.success
    assert recorder.text == "partial\nafter\n"


def written_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "wchar":
            return int(value)
    raise AssertionError("no wchar in /proc/PID/io")


async def test_slow_consumer_blocks_the_command() -> None:
    total = 20 * 1024 * 1024
    release = asyncio.Event()
    blocked = asyncio.Event()
    first: list[str] = []

    async def on_output(seq: int, text: str) -> None:
        if not first:
            first.append(text)
        blocked.set()
        await release.wait()

    async def on_started(_: object) -> None:
        pass

    # exec: the pid the shell prints first is the pid of the writer.
    task = asyncio.create_task(
        run_command(
            command(f"echo $$; exec head -c {total} /dev/zero"),
            LIMITS,
            on_started=on_started,
            on_output=on_output,
        )
    )
    try:
        await asyncio.wait_for(blocked.wait(), 30)
        pid = int(first[0].split("\n", 1)[0])
        # Without backpressure head writes all 20 MiB well within this time; with it,
        # only what fits in the pipe plus the runner's one read block.
        await asyncio.sleep(1.0)
        assert not task.done()
        assert written_bytes(pid) <= 2 * 1024 * 1024
        release.set()
        outcome = await asyncio.wait_for(task, 60)
    finally:
        release.set()
        await finish(task)
    assert outcome.success
    assert outcome.output_bytes == total + len(f"{pid}\n")


@pytest.mark.root
async def test_a_group_removal_takes_effect_at_the_very_next_command(
    scratch_user: CreatedUser,
) -> None:
    """Identities are cached between commands, but a change of /etc/group is seen at once."""
    first, recorder = await run("id -G", username=scratch_user.name)
    assert first.success, first
    assert scratch_user.group_gid in {int(g) for g in recorder.text.split()}
    await asyncio.to_thread(
        subprocess.run,
        ["gpasswd", "--delete", scratch_user.name, scratch_user.group_name],
        check=True,
        capture_output=True,
    )
    second, recorder = await run("id -G", username=scratch_user.name)
    assert second.success, second
    assert scratch_user.group_gid not in {int(g) for g in recorder.text.split()}
    refused, _ = await run("true", username=scratch_user.name, groupname=scratch_user.group_name)
    assert refused.error_phase == "start"


async def test_the_exit_is_awaited_without_a_pidfd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where pidfd_open is missing (Linux before 5.3) a thread waits for the exit instead."""

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "pidfd_open is not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    outcome, recorder = await run("echo hi; exit 3")
    assert outcome.exit_code == 3
    assert recorder.text == "hi\n"
    killed, _ = await run("kill -TERM $$")
    assert killed.exit_code == 128 + 15
