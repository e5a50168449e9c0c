"""The durable spool across agent restarts, against the scripted control plane.

Each test runs two agents one after the other on the same state directory: the second
is the first one restarted (after a graceful stop or a simulated crash).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import uuid
from pathlib import Path

import pytest
import structlog

from fleetgate.agent.spool import EXIT_INTERRUPTED, SPOOL_FILE, Batch, SpoolStore
from fleetgate.shared.protocol import (
    AgentMessage,
    CommandAcked,
    CommandDelivered,
    CommandFinished,
    CommandOutput,
    CommandRun,
    Confirm,
    encode,
)
from tests.integration.backhaul.conftest import MakeAgent, RunningAgent
from tests.support.fake_cp import ScriptedControlPlane


Report = CommandDelivered | CommandAcked | CommandOutput | CommandFinished


def appending(marker: Path) -> CommandRun:
    """A command that leaves one line in ``marker`` each time it runs."""
    return CommandRun(command_id=uuid.uuid4(), line=f"echo ran >> {marker}; echo ran")


async def reports_until_finished(cp: ScriptedControlPlane, command_id: uuid.UUID) -> list[Report]:
    """Every report frame until this command's final one (other frames are skipped)."""
    out: list[Report] = []
    while True:
        frame: AgentMessage = await cp.next_frame(timeout=30)
        if isinstance(frame, (CommandDelivered, CommandAcked, CommandOutput, CommandFinished)):
            out.append(frame)
            if isinstance(frame, CommandFinished) and frame.command_id == command_id:
                return out


async def crash(agent: RunningAgent) -> None:
    """Stop the daemon without its graceful phase (its commands are killed, no reports)."""
    agent.task.cancel()
    async with asyncio.timeout(30):
        await asyncio.gather(agent.task, return_exceptions=True)


async def test_a_command_delivered_three_times_across_a_restart_runs_once(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, tmp_path: Path
) -> None:
    """After a restart a redelivered id is not run again; its stored result is sent again."""
    marker = tmp_path / "ran.txt"
    cmd = appending(marker)
    first = await make_agent()
    await scripted_cp.connections.get()
    await scripted_cp.send(encode(cmd))
    before = await reports_until_finished(scripted_cp, cmd.command_id)
    await scripted_cp.send(encode(Confirm(rids=[r.rid for r in before])))
    await first.shutdown()

    await make_agent()
    await scripted_cp.connections.get()
    await scripted_cp.send(encode(cmd))
    await scripted_cp.send(encode(cmd))
    again = await reports_until_finished(scripted_cp, cmd.command_id)
    # Nothing but the final result comes back: no delivery, no start, no output.
    assert [type(r) for r in again] == [CommandFinished]
    resent, original = again[0], before[-1]
    assert isinstance(resent, CommandFinished)
    assert resent.rid > max(r.rid for r in before), "rids continue across restarts"
    assert resent.model_copy(update={"rid": original.rid}) == original
    # Once that is confirmed, a third delivery gets the stored result once more.
    await scripted_cp.send(encode(Confirm(rids=[resent.rid])))
    await scripted_cp.send(encode(cmd))
    third = await reports_until_finished(scripted_cp, cmd.command_id)
    assert [type(r) for r in third] == [CommandFinished]
    assert marker.read_text() == "ran\n"


async def test_unconfirmed_reports_survive_a_shutdown_and_are_sent_first(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, tmp_path: Path
) -> None:
    """Reports never confirmed before a stop are sent again, same rids, after the restart."""
    marker = tmp_path / "ran.txt"
    cmd = appending(marker)
    first = await make_agent(limits={"shutdown_grace": 0.2})
    await scripted_cp.connections.get()
    await scripted_cp.send(encode(cmd))
    before = await reports_until_finished(scripted_cp, cmd.command_id)
    await first.shutdown()  # the grace runs out: nothing was confirmed

    await make_agent()
    await scripted_cp.connections.get()
    after = await reports_until_finished(scripted_cp, cmd.command_id)
    assert after == before
    await scripted_cp.send(encode(cmd))  # redelivered while its result is in flight
    await scripted_cp.send(encode(Confirm(rids=[r.rid for r in after])))
    assert marker.read_text() == "ran\n"
    assert (tmp_path / "state" / SPOOL_FILE).stat().st_mode & 0o077 == 0


async def test_a_command_running_at_a_crash_is_reported_interrupted(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent
) -> None:
    """A crash mid-command: after the restart it gets an interrupted result, not a rerun."""
    cmd = CommandRun(command_id=uuid.uuid4(), line="sleep 30")
    first = await make_agent()
    await scripted_cp.connections.get()
    await scripted_cp.send(encode(cmd))
    await scripted_cp.next_of(CommandAcked)
    await crash(first)

    await make_agent()
    await scripted_cp.connections.get()
    reports = await reports_until_finished(scripted_cp, cmd.command_id)
    assert [r.type for r in reports] == ["command.delivered", "command.acked", "command.finished"]
    final = reports[-1]
    assert isinstance(final, CommandFinished)
    assert (final.error_phase, final.exit_code, final.success) == (
        "interrupted",
        EXIT_INTERRUPTED,
        False,
    )
    assert final.message is not None
    assert "restarted while the command was running" in final.message
    # The control plane sends it again (it had no report): it is not started again.
    await scripted_cp.send(encode(cmd))
    await scripted_cp.send(encode(Confirm(rids=[r.rid for r in reports])))
    later = CommandRun(command_id=uuid.uuid4(), line="echo later")
    await scripted_cp.send(encode(later))
    tail = await reports_until_finished(scripted_cp, later.command_id)
    assert {r.command_id for r in tail} == {later.command_id}


async def test_a_graceful_stop_closes_the_link_with_1001(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent
) -> None:
    """SIGTERM (the stop event) ends the websocket with 1001 "going away"."""
    agent = await make_agent()
    ws = await scripted_cp.connections.get()
    await agent.shutdown()
    async with asyncio.timeout(10):
        await ws.wait_closed()
    assert ws.close_code == 1001


async def test_finished_commands_are_forgotten_within_the_retention(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, tmp_path: Path
) -> None:
    """Beyond spool.max_finished_commands the oldest finished id goes, with a log line;
    the bound holds on disk too."""
    agent = await make_agent(spool={"max_finished_commands": 2})
    await scripted_cp.connections.get()
    commands = [CommandRun(command_id=uuid.uuid4(), line=f"echo {n}") for n in range(3)]
    with structlog.testing.capture_logs() as logs:
        for command in commands:
            await scripted_cp.send(encode(command))
            reports = await reports_until_finished(scripted_cp, command.command_id)
            await scripted_cp.send(encode(Confirm(rids=[r.rid for r in reports])))
        await agent.shutdown()
    pruned = [e for e in logs if e["event"] == "spool.inbox_pruned"]
    assert pruned == [
        {
            "event": "spool.inbox_pruned",
            "log_level": "info",
            "forgotten": 1,
            "reasons": {"count": 1},
        }
    ]
    store = SpoolStore.open(tmp_path / "state" / SPOOL_FILE)
    try:
        snapshot = store.load()
    finally:
        store.close()
    assert [cid for cid, _, _ in snapshot.finished] == [c.command_id for c in commands[1:]]
    assert (snapshot.active, snapshot.reports) == ([], [])


async def test_a_command_queued_at_a_crash_runs_after_the_restart(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, tmp_path: Path
) -> None:
    """Queued (never started) at the crash: it runs once after the restart; the one that
    was running is interrupted."""
    marker = tmp_path / "ran.txt"
    blocker = CommandRun(command_id=uuid.uuid4(), line="sleep 30")
    queued = appending(marker)
    first = await make_agent(limits={"max_concurrent_commands": 1})
    await scripted_cp.connections.get()
    await scripted_cp.send(encode(blocker))
    await scripted_cp.send(encode(queued))
    delivered: set[uuid.UUID] = set()
    while queued.command_id not in delivered:
        frame = await scripted_cp.next_of(CommandDelivered)
        assert isinstance(frame, CommandDelivered)
        delivered.add(frame.command_id)
    await crash(first)

    await make_agent()
    await scripted_cp.connections.get()
    reports = await reports_until_finished(scripted_cp, queued.command_id)
    finals = {r.command_id: r for r in reports if isinstance(r, CommandFinished)}
    assert finals[blocker.command_id].error_phase == "interrupted"
    done = finals[queued.command_id]
    assert (done.exit_code, done.result, done.error_phase) == (0, "ran\n", None)
    deliveries = {
        r.rid
        for r in reports
        if r.command_id == queued.command_id and r.type == "command.delivered"
    }
    assert len(deliveries) == 1, "the delivery was reported once (and resent as such)"
    assert marker.read_text() == "ran\n"


async def test_a_power_cut_before_the_final_reports_fsync_reports_interrupted(
    scripted_cp: ScriptedControlPlane,
    make_agent: MakeAgent,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The final report goes out before its fsync. A power cut in between leaves on disk
    what the last fsync covered: the command running. The restarted agent reports it
    interrupted (the control plane keeps the first result) and never runs it again."""
    state = tmp_path / "state"
    disk = tmp_path / "disk"  # what survives the power cut
    fsync_may_end = threading.Event()
    apply, sync = SpoolStore.apply, SpoolStore.sync

    def apply_after_image(self: SpoolStore, batch: Batch) -> None:
        if batch.must_persist and not batch.must_sync and not disk.exists():
            # The first batch sent before its fsync (the command's output): every batch
            # before it was fsynced (the command running); the files now are what a
            # power cut from here on would leave.
            disk.mkdir()
            for name in (SPOOL_FILE, f"{SPOOL_FILE}-wal"):
                if (state / name).exists():
                    shutil.copy2(state / name, disk / name)
        apply(self, batch)

    def held_sync(self: SpoolStore) -> None:
        fsync_may_end.wait(30)
        sync(self)

    monkeypatch.setattr(SpoolStore, "apply", apply_after_image)
    monkeypatch.setattr(SpoolStore, "sync", held_sync)
    marker = tmp_path / "ran.txt"
    cmd = appending(marker)
    first = await make_agent()
    await scripted_cp.connections.get()
    await scripted_cp.send(encode(cmd))
    reports = await reports_until_finished(scripted_cp, cmd.command_id)
    final = reports[-1]
    assert isinstance(final, CommandFinished)
    assert (final.exit_code, final.result) == (0, "ran\n")
    assert disk.is_dir(), "every report was synced before it was sent"
    # The power cut: the agent is gone, its page cache too.
    fsync_may_end.set()
    await crash(first)
    for leftover in state.glob(f"{SPOOL_FILE}*"):
        leftover.unlink()
    for image in disk.iterdir():
        shutil.copy2(image, state / image.name)

    await make_agent()
    await scripted_cp.connections.get()
    again = await reports_until_finished(scripted_cp, cmd.command_id)
    interrupted = again[-1]
    assert isinstance(interrupted, CommandFinished)
    assert (interrupted.error_phase, interrupted.exit_code) == ("interrupted", EXIT_INTERRUPTED)
    # Redelivered (as a control plane that lost everything would): not run again.
    await scripted_cp.send(encode(cmd))
    await scripted_cp.send(encode(Confirm(rids=[r.rid for r in again])))
    later = appending(tmp_path / "later.txt")
    await scripted_cp.send(encode(later))
    await reports_until_finished(scripted_cp, later.command_id)
    assert marker.read_text() == "ran\n"
