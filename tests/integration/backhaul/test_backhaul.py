"""The agent's backhaul against a scripted control plane on loopback."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from fleetgate.agent.errors import AuthRejected
from fleetgate.shared.protocol import (
    CommandAcked,
    CommandDelivered,
    CommandFinished,
    CommandOutput,
    CommandRun,
    Confirm,
    ErrorMessage,
    Ping,
    Pong,
    encode,
)
from tests.integration.backhaul.conftest import MakeAgent
from tests.support.fake_cp import ScriptedControlPlane


def run(line: str, **fields: object) -> CommandRun:
    return CommandRun(command_id=uuid.uuid4(), line=line, **fields)


async def collect_until_finished(
    cp: ScriptedControlPlane, command_id: uuid.UUID
) -> list[CommandDelivered | CommandAcked | CommandOutput | CommandFinished]:
    reports: list[CommandDelivered | CommandAcked | CommandOutput | CommandFinished] = []
    while True:
        frame = await cp.next_frame(timeout=30)
        reportable = (CommandDelivered, CommandAcked, CommandOutput, CommandFinished)
        if isinstance(frame, reportable) and frame.command_id == command_id:
            reports.append(frame)
            if isinstance(frame, CommandFinished):
                return reports


async def test_a_command_is_reported_delivered_acked_output_finished(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent
) -> None:
    """One command yields its four kinds of report, in order, with ordered timestamps."""
    await make_agent()
    await scripted_cp.connections.get()
    cmd = run("echo hello; echo err >&2; exit 3")
    await scripted_cp.send(encode(cmd))
    reports = await collect_until_finished(scripted_cp, cmd.command_id)
    kinds = [r.type for r in reports]
    assert kinds[0] == "command.delivered"
    assert kinds[1] == "command.acked"
    assert kinds[-1] == "command.finished"
    assert [r.rid for r in reports] == sorted(r.rid for r in reports)
    delivered, acked, finished = reports[0], reports[1], reports[-1]
    assert isinstance(delivered, CommandDelivered)
    assert isinstance(acked, CommandAcked)
    assert isinstance(finished, CommandFinished)
    assert delivered.delivered_at <= acked.acked_at <= finished.handled_at
    wall = (finished.handled_at - acked.acked_at).total_seconds()
    assert abs(wall - finished.elapsed_time) < 0.5
    output = "".join(r.data for r in reports if isinstance(r, CommandOutput))
    assert output == "hello\nerr\n"
    assert finished.result == "hello\nerr\n"
    assert (finished.exit_code, finished.success) == (3, False)


async def test_unconfirmed_reports_are_sent_again_after_a_reconnect(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent
) -> None:
    """Reports the control plane never confirmed are resent, oldest first, on a new link."""
    await make_agent()
    first = await scripted_cp.connections.get()
    cmd = run("echo once")
    await scripted_cp.send(encode(cmd))
    before = await collect_until_finished(scripted_cp, cmd.command_id)
    # Confirm only the delivery report, then drop the link.
    await scripted_cp.send(encode(Confirm(rids=[before[0].rid])))
    await first.close()
    await scripted_cp.connections.get()
    after = await collect_until_finished(scripted_cp, cmd.command_id)
    assert [r.rid for r in after] == [r.rid for r in before[1:]]
    assert after == before[1:]
    # Once everything is confirmed, a third connection carries nothing old.
    await scripted_cp.send(encode(Confirm(rids=[r.rid for r in after])))
    await scripted_cp.send(encode(Ping(nonce=99)))
    assert await scripted_cp.next_frame() == Pong(nonce=99)


async def test_a_command_delivered_three_times_runs_once(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent
) -> None:
    """The inbox drops redeliveries of a known id, whatever state the command is in."""
    await make_agent()
    await scripted_cp.connections.get()
    cmd = run("echo ran")
    for _ in range(3):
        await scripted_cp.send(encode(cmd))
    reports = await collect_until_finished(scripted_cp, cmd.command_id)
    await scripted_cp.send(encode(cmd))
    await scripted_cp.send(encode(Ping(nonce=7)))
    assert await scripted_cp.next_frame() == Pong(nonce=7)
    assert [r.type for r in reports].count("command.delivered") == 1
    assert [r.type for r in reports].count("command.finished") == 1


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("this is not json", "malformed"),
        ('{"type": "launch.missiles"}', "unknown_type"),
        ('{"type": "command.run", "command_id": "x", "line": "id"}', "invalid"),
        (json.dumps({"type": "confirm", "rids": [0] * 600_000}), "too_large"),
        # Issue 14 finding 7: nesting used to raise RecursionError and drop the link.
        ("[" * 100_000 + "]" * 100_000, "malformed"),
        ('{"type": "ping", "nonce": ' + "[" * 100_000 + "]" * 100_000 + "}", "malformed"),
    ],
    ids=["not json", "unknown type", "invalid", "too large", "deep", "deep in a field"],
)
async def test_bad_frames_get_an_error_and_the_link_survives(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, frame: str, code: str
) -> None:
    """Malformed, unknown, invalid and oversized frames are answered; the link stays up."""
    await make_agent(limits={"max_message_bytes": 1024 * 1024})
    await scripted_cp.connections.get()
    await scripted_cp.send(frame)
    error = await scripted_cp.next_frame()
    assert isinstance(error, ErrorMessage)
    assert error.code == code
    await scripted_cp.send(encode(Ping(nonce=1)))
    assert await scripted_cp.next_frame() == Pong(nonce=1)
    assert scripted_cp.connections.empty()


async def test_refused_credentials_stop_the_agent(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent
) -> None:
    """HTTP 401 at the handshake is fatal: retrying with the same key cannot help."""
    scripted_cp.accept_auth = False
    agent = await make_agent()
    with pytest.raises(AuthRejected, match="401"):
        async with asyncio.timeout(10):
            await agent.task


async def test_a_silent_peer_is_declared_dead_and_redialled(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent
) -> None:
    """Without pongs the agent drops the link within the keepalive timeout and dials again."""
    scripted_cp.auto_pong = False
    await make_agent(backhaul={"keepalive_interval": 0.2, "keepalive_timeout": 0.3})
    await scripted_cp.connections.get()
    ping = await scripted_cp.next_of(Ping)
    assert isinstance(ping, Ping)
    # No pong: the agent gives up on this connection and opens another one.
    await scripted_cp.connections.get()
    assert len(scripted_cp.hellos) == 2


async def test_commands_above_the_limit_start_in_arrival_order(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent
) -> None:
    """With one slot, commands run one at a time in the order they were delivered."""
    await make_agent(limits={"max_concurrent_commands": 1})
    await scripted_cp.connections.get()
    cmds = [run(f"echo {i}") for i in range(5)]
    for cmd in cmds:
        await scripted_cp.send(encode(cmd))
    acked: list[uuid.UUID] = []
    finished: list[uuid.UUID] = []
    while len(finished) < len(cmds):
        frame = await scripted_cp.next_frame(timeout=30)
        if isinstance(frame, CommandAcked):
            acked.append(frame.command_id)
            assert len(acked) == len(finished) + 1, "two commands ran at once"
        elif isinstance(frame, CommandFinished):
            finished.append(frame.command_id)
    assert acked == [c.command_id for c in cmds]


async def test_hello_announces_running_commands_after_a_reconnect(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent
) -> None:
    """A command still running when the link drops is listed in the next hello."""
    await make_agent()
    first = await scripted_cp.connections.get()
    cmd = run("sleep 30")
    await scripted_cp.send(encode(cmd))
    await scripted_cp.next_of(CommandAcked)
    await first.close()
    await scripted_cp.connections.get()
    assert scripted_cp.hellos[-1].running == [cmd.command_id]


async def test_graceful_stop_lets_a_running_command_finish(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent
) -> None:
    """On stop, new commands are refused and the running one's result is still sent."""
    agent = await make_agent()
    await scripted_cp.connections.get()
    cmd = run("sleep 0.5; echo done")
    await scripted_cp.send(encode(cmd))
    await scripted_cp.next_of(CommandAcked)
    agent.stop.set()
    late = run("echo too late")
    await scripted_cp.send(encode(late))
    refused = await scripted_cp.next_of(ErrorMessage)
    assert isinstance(refused, ErrorMessage)
    assert (refused.code, refused.ref) == ("shutting_down", str(late.command_id))
    finished = await scripted_cp.next_of(CommandFinished)
    assert isinstance(finished, CommandFinished)
    assert finished.result == "done\n"
    await scripted_cp.send(encode(Confirm(rids=list(range(finished.rid + 1)))))
    async with asyncio.timeout(10):
        await agent.task
