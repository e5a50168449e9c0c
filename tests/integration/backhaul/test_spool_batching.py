"""A burst of commands is written to the spool in batches, not one commit per change."""

from __future__ import annotations

import asyncio
import functools
import threading
import uuid
from pathlib import Path

import pytest

from fleetgate.agent.dispatch import reports as dispatch_reports
from fleetgate.agent.spool import Batch, CommandState, Spool, SpoolStore
from fleetgate.shared.protocol import (
    CommandAcked,
    CommandDelivered,
    CommandFinished,
    CommandOutput,
    CommandRun,
    Confirm,
    encode,
)
from tests.integration.backhaul.conftest import MakeAgent
from tests.support.fake_cp import ScriptedControlPlane


BURST = 500


async def test_a_burst_of_500_commands_is_written_in_batches(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every report is durable before it is sent, yet commits stay far fewer than reports."""
    commits = 0
    changes = 0
    lock = threading.Lock()
    apply = SpoolStore.apply

    def counting_apply(self: SpoolStore, batch: Batch) -> None:
        nonlocal commits, changes
        with lock:
            commits += 1
            changes += len(batch.reports) + len(batch.states) + len(batch.accepted)
        apply(self, batch)

    monkeypatch.setattr(SpoolStore, "apply", counting_apply)
    await make_agent(limits={"max_concurrent_commands": 64})
    await scripted_cp.connections.get()
    loop = asyncio.get_running_loop()
    started = loop.time()
    commands = [CommandRun(command_id=uuid.uuid4(), line="true") for _ in range(BURST)]
    for command in commands:
        await scripted_cp.send(encode(command))
    finished: set[uuid.UUID] = set()
    reports = 0
    while len(finished) < BURST:
        frame = await scripted_cp.next_frame(timeout=60)
        if isinstance(frame, (CommandDelivered, CommandAcked, CommandOutput, CommandFinished)):
            reports += 1
        if isinstance(frame, CommandFinished):
            assert frame.exit_code == 0
            finished.add(frame.command_id)
    elapsed = loop.time() - started
    print(f"{BURST} commands, {reports} reports, {commits} commits in {elapsed:.2f} s")
    assert finished == {c.command_id for c in commands}
    # delivered + running state + acked + finished per command, and yet:
    assert changes >= 4 * BURST
    assert commits * 4 <= changes, f"{commits} commits for {changes} changes: not batched"


async def test_a_short_command_waits_for_one_fsync(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inbox row, already running, in one FULL commit before the spawn; the delivery,
    start and final reports in one commit, sent before its fsync; the confirmation's
    deletion written only once that fsync returned."""
    events: list[Batch | str] = []
    lock = threading.Lock()
    fsync_may_end = threading.Event()
    confirmation_written = threading.Event()
    apply, sync = SpoolStore.apply, SpoolStore.sync

    def recording_apply(self: SpoolStore, batch: Batch) -> None:
        with lock:
            events.append(batch)
        apply(self, batch)
        if batch.confirmed:
            confirmation_written.set()

    def held_sync(self: SpoolStore) -> None:
        # Held until the control plane has the final report: proof that it was sent
        # before its fsync returned (else this times out and the test fails).
        assert fsync_may_end.wait(30), "the final report was not sent before its fsync"
        with lock:
            events.append("sync")
        sync(self)

    monkeypatch.setattr(SpoolStore, "apply", recording_apply)
    monkeypatch.setattr(SpoolStore, "sync", held_sync)
    # However slow this machine is, the started report waits for the final one.
    monkeypatch.setattr(dispatch_reports, "ACK_WRITE_DELAY", 600.0)
    await make_agent()
    await scripted_cp.connections.get()
    command = CommandRun(command_id=uuid.uuid4(), line="true")
    await scripted_cp.send(encode(command))
    rids = []
    while True:
        frame = await scripted_cp.next_frame(timeout=30)
        if isinstance(frame, (CommandDelivered, CommandAcked, CommandFinished)):
            rids.append(frame.rid)
        if isinstance(frame, CommandFinished):
            break
    with lock:
        assert "sync" not in events
    fsync_may_end.set()
    await scripted_cp.send(encode(Confirm(rids=rids)))
    assert await asyncio.to_thread(confirmation_written.wait, 30)
    with lock:
        ours = [e for e in events if isinstance(e, str) or e.must_persist or e.confirmed]
    assert len(ours) == 4, ours
    first, second, synced, confirmed = ours
    assert isinstance(first, Batch)
    assert first.must_sync
    assert [c.command_id for c, _ in first.accepted] == [command.command_id]
    assert first.states == [(command.command_id, CommandState.RUNNING)]
    assert first.reports == []
    assert isinstance(second, Batch)
    assert not second.must_sync
    assert [type(r) for r in second.reports] == [CommandDelivered, CommandAcked, CommandFinished]
    assert [e.command_id for e in second.finished] == [command.command_id]
    assert synced == "sync"
    assert isinstance(confirmed, Batch)
    assert sorted(confirmed.confirmed) == sorted(rids)
    assert not confirmed.must_persist  # a confirmation alone is never fsynced


async def test_deferred_changes_ride_with_the_next_commit_or_meet_their_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied: list[Batch] = []
    apply = SpoolStore.apply

    def recording_apply(self: SpoolStore, batch: Batch) -> None:
        applied.append(batch)
        apply(self, batch)

    monkeypatch.setattr(SpoolStore, "apply", recording_apply)
    spool, _ = await Spool.open(tmp_path)
    try:
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(spool.run())
            deferred = spool.commit(lambda b: b.confirmed.append(1), within=600)
            spool.stage(lambda b: b.confirmed.append(2), within=600)
            now = spool.commit(lambda b: b.confirmed.append(3))
            async with asyncio.timeout(30):
                await now
            assert deferred.done()
            assert [b.confirmed for b in applied] == [[1, 2, 3]]
            alone = spool.commit(lambda b: b.confirmed.append(4), within=0.05)
            async with asyncio.timeout(30):
                await alone  # nobody else writes: the deadline does
            assert [b.confirmed for b in applied] == [[1, 2, 3], [4]]
            writer.cancel()
    finally:
        await spool.close()


async def test_unsynced_reports_ride_with_the_next_full_commit_or_get_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reports sent before their fsync are synced by the next FULL commit (the next
    command's start), which costs no fsync of its own; alone, by SYNC_DELAY."""
    events: list[str] = []
    synced = threading.Event()
    apply, sync = SpoolStore.apply, SpoolStore.sync

    def recording_apply(self: SpoolStore, batch: Batch) -> None:
        events.append("full" if batch.must_sync else "normal")
        apply(self, batch)

    def recording_sync(self: SpoolStore) -> None:
        events.append("sync")
        sync(self)
        synced.set()

    monkeypatch.setattr(SpoolStore, "apply", recording_apply)
    monkeypatch.setattr(SpoolStore, "sync", recording_sync)
    command_id = uuid.uuid4()

    def output(seq: int) -> CommandOutput:
        return CommandOutput(rid=seq, command_id=command_id, seq=seq, data="x")

    spool, _ = await Spool.open(tmp_path)
    try:
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(spool.run())
            async with asyncio.timeout(30):
                await spool.commit(
                    functools.partial(Batch.add_report, report=output(0)), sync_first=False
                )
                await spool.commit(functools.partial(Batch.add_report, report=output(1)))
            assert events == ["normal", "full"]
            async with asyncio.timeout(30):
                await spool.commit(
                    functools.partial(Batch.add_report, report=output(2)), sync_first=False
                )
            assert await asyncio.to_thread(synced.wait, 30)
            assert events == ["normal", "full", "normal", "sync"]
            writer.cancel()
    finally:
        await spool.close()
