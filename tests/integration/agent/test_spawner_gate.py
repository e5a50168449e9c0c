"""Gated starts: the spawner helper prepares a command while its record reaches the disk.

The child is forked and switched to its user at once, then waits for the agent's go byte
before it execs; whatever happens before the go (the gate fails, the start is
cancelled, the agent is SIGKILLed), the command never runs and no process is left.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetgate.agent.exec import runner
from fleetgate.shared.protocol.messages import CommandRun
from tests.integration.agent.test_runner import Recorder, wait_gone
from tests.integration.agent.test_spawner import LIMITS, children_of, helper_pid
from tests.support.users import CreatedUser


pytestmark = pytest.mark.root

PREPARED_WITHIN = 30.0
"""Seconds a loaded machine may take to fork the child and switch its identity."""


@pytest.fixture(autouse=True)
def fresh_spawner() -> Iterator[None]:
    """Each test starts its own helper and leaves none behind."""
    runner.close_spawner()
    yield
    runner.close_spawner()


@pytest.fixture
def marker() -> Iterator[Path]:
    """A path any user may create: it exists only if a command ran."""
    with tempfile.TemporaryDirectory(prefix="fleet-gate-") as directory:
        os.chmod(directory, 0o777)
        yield Path(directory) / "ran"


def uid_of(pid: int) -> int | None:
    """The real uid of ``pid``, None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return int(line.split()[1])


def prepared_child(helper: int, uid: int) -> int:
    """The helper's child once it runs as ``uid`` (polled: the fork and the switch are
    the helper's own business, with no event to await)."""
    deadline = time.monotonic() + PREPARED_WITHIN
    while time.monotonic() < deadline:
        for child in children_of(helper):
            if uid_of(child) == uid:
                return child
        time.sleep(0.01)
    raise AssertionError(f"the helper {helper} prepared no child as uid {uid}")


async def finish(task: asyncio.Task[Any]) -> None:
    """Cancel a run a failed test left behind, so its process is stopped."""
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def ran(marker: Path) -> bool:
    """Whether the command ran (it creates ``marker``)."""
    return marker.exists()


def exe(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/exe")


async def started_helper(user: CreatedUser) -> int:
    """Start the helper (and cache the identity) with one ungated command."""
    outcome, _ = await gated("true", user, None)
    assert outcome.success, outcome
    return helper_pid()


async def gated(
    line: str, user: CreatedUser, gate: asyncio.Future[None] | None
) -> tuple[runner.CommandOutcome, Recorder]:
    recorder = Recorder()
    outcome = await runner.run_command(
        CommandRun(command_id=uuid.uuid4(), line=line, username=user.name),
        LIMITS,
        on_started=recorder.on_started,
        on_output=recorder.on_output,
        gate=gate,
    )
    return outcome, recorder


async def test_the_child_is_prepared_and_execs_only_after_go(
    scratch_user: CreatedUser, marker: Path
) -> None:
    helper = await started_helper(scratch_user)
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(gated(f"touch {marker}; echo ran", scratch_user, gate))
    try:
        child = await asyncio.to_thread(prepared_child, helper, scratch_user.uid)
        # Its identity is switched, yet it is still the helper's image: no exec.
        assert exe(child) == exe(helper)
        assert not ran(marker)
        assert not task.done()
        gate.set_result(None)
        outcome, recorder = await asyncio.wait_for(task, 30)
    finally:
        await finish(task)
    assert outcome.success, outcome
    assert recorder.text == "ran\n"
    assert ran(marker)


@pytest.mark.parametrize("how", ["gate_fails", "cancelled"])
async def test_a_start_called_off_before_go_never_runs(
    scratch_user: CreatedUser, marker: Path, how: str
) -> None:
    """The gate fails (the record could not be written) or the start is cancelled: the
    child ends without exec, the helper reaps it and still serves the next command."""
    helper = await started_helper(scratch_user)
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(gated(f"touch {marker}", scratch_user, gate))
    try:
        child = await asyncio.to_thread(prepared_child, helper, scratch_user.uid)
        if how == "gate_fails":
            gate.set_exception(OSError(5, "the disk said no"))
            with pytest.raises(OSError, match="the disk said no"):
                await asyncio.wait_for(task, 30)
        else:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        await finish(task)
    assert await asyncio.to_thread(wait_gone, child)
    assert not ran(marker)
    outcome, _ = await gated("true", scratch_user, None)
    assert outcome.success, outcome
    assert helper_pid() == helper
    # The helper serves one start at a time: once it answered this one, it had reaped.
    assert child not in children_of(helper)


GATED_AGENT_SCRIPT = """
import asyncio, sys, uuid
from fleetgate.agent.config import LimitsConfig
from fleetgate.agent.exec import runner
from fleetgate.shared.protocol.messages import CommandRun

async def main() -> None:
    async def ignore(*_: object) -> None: ...
    user, marker = sys.argv[1], sys.argv[2]
    warm = CommandRun(command_id=uuid.uuid4(), line="true", username=user)
    await runner.run_command(warm, LimitsConfig(), on_started=ignore, on_output=ignore)
    print("HELPER", runner._SPAWNER.helpers[0].pid, flush=True)
    run = CommandRun(command_id=uuid.uuid4(), line=f"touch {marker}", username=user)
    never = asyncio.get_running_loop().create_future()  # the record never reaches the disk
    await runner.run_command(run, LimitsConfig(), on_started=ignore, on_output=ignore, gate=never)

asyncio.run(main())
"""


async def test_an_agent_killed_between_fork_and_go_leaves_no_process(
    scratch_user: CreatedUser, marker: Path
) -> None:
    """SIGKILL while a child waits for its go: end of file on its go pipe ends it without
    exec, and end of file on its socket ends the helper."""
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        GATED_AGENT_SCRIPT,
        scratch_user.name,
        str(marker),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert agent.stdout is not None
        line = b""
        while not line.startswith(b"HELPER "):  # after the agent's own log lines
            line = await asyncio.wait_for(agent.stdout.readline(), 30)
            assert line, "the agent ended early"
        helper = int(line.split()[1])
        child = await asyncio.to_thread(prepared_child, helper, scratch_user.uid)
        assert exe(child) == exe(helper)
    finally:
        agent.send_signal(signal.SIGKILL)
        await agent.wait()
    assert await asyncio.to_thread(wait_gone, child)
    assert await asyncio.to_thread(wait_gone, helper)
    assert not ran(marker)
