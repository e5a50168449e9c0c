"""The end of a work session stops its commands on the agent (``work_session.ended``).

A real agent against a scripted control plane: one slot, a long command of the session
running, another of the session and one of another session queued behind it. The end
stops the running one (its process group, as at a timeout), refuses the queued one of the
session when its slot comes, and leaves the other session's command alone.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from fleetgate.shared.protocol import (
    CommandAcked,
    CommandFinished,
    CommandRun,
    WorkSessionEnded,
    encode,
)
from tests.integration.backhaul.conftest import MakeAgent
from tests.support.fake_cp import ScriptedControlPlane


pytestmark = pytest.mark.timeout(60)


async def test_the_end_of_a_session_stops_its_commands_only(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent
) -> None:
    await make_agent(limits={"max_concurrent_commands": 1})
    await scripted_cp.connections.get()
    running = CommandRun(command_id=uuid.uuid4(), line="sleep 1000", work_session="ws-a")
    queued = CommandRun(command_id=uuid.uuid4(), line="echo never", work_session="ws-a")
    other = CommandRun(command_id=uuid.uuid4(), line="echo other", work_session="ws-b")
    await scripted_cp.send(encode(running))
    acked = await scripted_cp.next_of(CommandAcked, timeout=30)
    assert isinstance(acked, CommandAcked)
    assert acked.command_id == running.command_id
    await scripted_cp.send(encode(queued))
    await scripted_cp.send(encode(other))
    await scripted_cp.send(encode(WorkSessionEnded(work_session="ws-a", status="revoked")))
    finished: dict[uuid.UUID, CommandFinished] = {}
    while len(finished) < 3:
        frame = await scripted_cp.next_frame(timeout=30)
        if isinstance(frame, CommandFinished):
            finished[frame.command_id] = frame
    stopped = finished[running.command_id]
    assert (stopped.error_phase, stopped.code, stopped.exit_code) == (
        "stopped",
        "work_session_ended",
        128 + 15,
    )
    assert stopped.message == "stopped: its work session ws-a ended (revoked)"
    refused = finished[queued.command_id]
    assert (refused.error_phase, refused.code) == ("denied", "work_session_ended")
    assert (refused.elapsed_time, refused.result) == (0.0, "")
    kept = finished[other.command_id]
    assert (kept.exit_code, kept.error_phase, kept.result) == (0, None, "other\n")


async def test_a_command_of_an_ended_session_arriving_late_never_starts(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, tmp_path: Path
) -> None:
    """Sent before the end, read after it: refused, though a slot is free."""
    await make_agent()
    await scripted_cp.connections.get()
    await scripted_cp.send(encode(WorkSessionEnded(work_session="ws-c", status="expired")))
    marker = tmp_path / "ran"
    late = CommandRun(command_id=uuid.uuid4(), line=f"touch {marker}", work_session="ws-c")
    await scripted_cp.send(encode(late))
    frame = await scripted_cp.next_of(CommandFinished, timeout=30)
    assert isinstance(frame, CommandFinished)
    assert (frame.command_id, frame.error_phase, frame.code) == (
        late.command_id,
        "denied",
        "work_session_ended",
    )
    assert frame.message is not None
    assert "ws-c ended (expired)" in frame.message
    assert not marker.exists()
