"""A burst of commands is written to the spool in batches, not one commit per change."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from fleetgate.agent.spool import Batch, SpoolStore
from fleetgate.shared.protocol import (
    CommandAcked,
    CommandDelivered,
    CommandFinished,
    CommandOutput,
    CommandRun,
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
