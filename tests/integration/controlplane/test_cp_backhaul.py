"""The agent websocket against the real control plane: auth, protocol, delivery."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from fleetgate.shared.protocol import (
    CommandAcked,
    CommandDelivered,
    CommandFinished,
    CommandOutput,
    CommandReport,
    CommandRun,
    Confirm,
    ErrorMessage,
    Ping,
    Pong,
)
from tests.support.controlplane import ControlPlaneProcess, FakeAgent, Server
from tests.support.waiting import eventually


def api(cp: ControlPlaneProcess, token: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=cp.url, headers=cp.auth_headers(token), timeout=10)


async def create(
    cp: ControlPlaneProcess, server: Server, line: str = "id", **extra: object
) -> dict[str, object]:
    async with api(cp) as client:
        response = await client.post(
            "/api/events/commands/", json={"server": server.name, "line": line, **extra}
        )
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def get_command(cp: ControlPlaneProcess, command_id: str) -> dict[str, object]:
    async with api(cp) as client:
        response = await client.get(f"/api/events/commands/{command_id}/")
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def roundtrip(agent: FakeAgent, nonce: int = 99) -> None:
    """Ping and wait for the pong: everything the hub sent before is already received."""
    await agent.send(Ping(nonce=nonce))
    assert (await agent.expect(Pong)).nonce == nonce


# -- authentication --------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        None,
        "garbage",
        'id="{id}", key="wrong"',
        f'id="{uuid.uuid4()}", key="{{key}}"',
        'id="not-a-uuid", key="{key}"',
    ],
)
async def test_backhaul_refuses_bad_credentials_with_401(
    control_plane: ControlPlaneProcess, server: Server, header: str | None
) -> None:
    headers = (
        {} if header is None else {"Authorization": header.format(id=server.id, key=server.key)}
    )
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(
            control_plane.backhaul_url, additional_headers=headers, open_timeout=10
        ):
            pass
    assert info.value.response.status_code == 401
    assert json.loads(info.value.response.body or b"{}")["code"] == "AUTHENTICATION_FAILED"


async def test_hello_welcome_and_liveness(
    control_plane: ControlPlaneProcess, server: Server
) -> None:
    agent = await FakeAgent.connect(control_plane, server.id, server.key)
    assert agent.skipped == []  # welcome is the first frame
    async with api(control_plane) as client:
        body = (await client.get(f"/api/servers/servers/{server.name}/")).json()
    assert body["is_connected"] is True
    assert body["agent_version"] == "test"
    assert body["hostname"] == "fake"
    assert body["connected_at"] is not None
    assert body["last_seen_at"] is not None
    await roundtrip(agent)
    await agent.close()


# -- delivery and reports --------------------------------------------------------------


async def test_command_is_sent_and_reports_are_stored_once(
    control_plane: ControlPlaneProcess, server: Server
) -> None:
    agent = await FakeAgent.connect(control_plane, server.id, server.key)
    created = await create(control_plane, server, "uname -a", username="deploy", env={"K": "V"})
    run = await agent.expect(CommandRun)
    assert str(run.command_id) == created["id"]
    assert (run.line, run.username, run.groupname, run.env) == (
        "uname -a",
        "deploy",
        None,
        {"K": "V"},
    )
    assert created["status"] == {
        "text": "Sent",
        "color": "info",
        "cancellable": False,
        "message": created["status"]["message"],  # type: ignore[index]
    }
    cid = run.command_id
    t = datetime(2024, 1, 15, 10, 30, 44, 500000, tzinfo=UTC)
    reports: list[CommandReport] = [
        CommandDelivered(rid=agent.next_rid(), command_id=cid, delivered_at=t),
        CommandAcked(rid=agent.next_rid(), command_id=cid, acked_at=t + timedelta(seconds=1)),
        CommandOutput(rid=agent.next_rid(), command_id=cid, seq=0, data="Linux "),
        CommandOutput(rid=agent.next_rid(), command_id=cid, seq=1, data="host\n"),
        CommandFinished(
            rid=agent.next_rid(),
            command_id=cid,
            handled_at=t + timedelta(seconds=2),
            elapsed_time=1.0,
            exit_code=0,
            success=True,
            result="Linux host\n",
        ),
    ]
    for report in reports:
        await agent.send(report)
    await agent.confirmed(r.rid for r in reports)
    # The same reports again (a resend after a reconnect) with different content.
    dup_rid = agent.next_rid()
    await agent.send(CommandOutput(rid=dup_rid, command_id=cid, seq=1, data="CHANGED"))
    await agent.send(reports[0].model_copy(update={"delivered_at": t + timedelta(hours=1)}))
    await agent.confirmed([dup_rid, reports[0].rid])

    body = await get_command(control_plane, str(cid))
    assert body["delivered_at"] == "2024-01-15T10:30:44.500000Z"
    assert body["acked_at"] == "2024-01-15T10:30:45.500000Z"
    assert body["handled_at"] == "2024-01-15T10:30:46.500000Z"
    assert body["elapsed_time"] == 1.0
    assert body["exit_code"] == 0
    assert body["success"] is True
    assert body["result"] == "Linux host\n"
    assert body["status"]["text"] == "Success"  # type: ignore[index]
    assert "env" not in body
    async with api(control_plane) as client:
        chunks = (await client.get(f"/api/events/commands/{cid}/chunks/")).json()
    assert chunks["count"] == 2
    assert chunks["results"] == [{"seq": 0, "content": "Linux "}, {"seq": 1, "content": "host\n"}]
    await agent.close()


async def test_report_for_unknown_command_is_refused_and_confirmed(
    control_plane: ControlPlaneProcess, server: Server
) -> None:
    agent = await FakeAgent.connect(control_plane, server.id, server.key)
    rid = agent.next_rid()
    await agent.send(CommandOutput(rid=rid, command_id=uuid.uuid4(), seq=0, data="x"))
    error = await agent.expect(ErrorMessage)
    assert (error.code, error.ref) == ("invalid", str(rid))
    await agent.confirmed([rid])
    await agent.close()


async def test_report_for_another_servers_command_is_refused(
    control_plane: ControlPlaneProcess, server: Server
) -> None:
    other = control_plane.new_server()
    owner = await FakeAgent.connect(control_plane, other.id, other.key)
    created = await create(control_plane, other)
    await owner.expect(CommandRun)
    intruder = await FakeAgent.connect(control_plane, server.id, server.key)
    rid = intruder.next_rid()
    await intruder.send(
        CommandFinished(
            rid=rid,
            command_id=uuid.UUID(str(created["id"])),
            handled_at=datetime.now(UTC),
            elapsed_time=0,
            exit_code=0,
            success=True,
            result="forged",
        )
    )
    error = await intruder.expect(ErrorMessage)
    assert (error.code, error.ref) == ("invalid", str(rid))
    body = await get_command(control_plane, str(created["id"]))
    assert body["result"] is None
    await owner.close()
    await intruder.close()


@pytest.mark.parametrize(
    ("frame", "code", "ref"),
    [
        ("{not json", "malformed", None),
        ("[1, 2]", "malformed", None),
        ('{"type": "bogus", "rid": 7}', "unknown_type", "7"),
        ('{"rid": 7}', "unknown_type", "7"),
        (
            '{"type": "command.output", "rid": 8, "command_id": "nope", "seq": 0, "data": "x"}',
            "invalid",
            "8",
        ),
        ('{"type": "ping", "nonce": "x"}', "invalid", "x"),
        (b"\xff\xfe", "malformed", None),
        (
            '{"type": "ping", "nonce": 5, "pad": "' + "x" * (4 * 1024 * 1024) + '"}',
            "too_large",
            "5",
        ),
    ],
    ids=[
        "malformed",
        "not-object",
        "unknown-type",
        "no-type",
        "invalid-field",
        "invalid-nonce",
        "binary",
        "oversized",
    ],
)
async def test_bad_frames_get_an_error_and_the_connection_stays_open(
    control_plane: ControlPlaneProcess,
    server: Server,
    frame: str | bytes,
    code: str,
    ref: str | None,
) -> None:
    agent = await FakeAgent.connect(control_plane, server.id, server.key)
    await agent.send(frame)
    error = await agent.expect(ErrorMessage)
    assert (error.code, error.ref) == (code, ref)
    await roundtrip(agent)
    created = await create(control_plane, server)
    assert str((await agent.expect(CommandRun)).command_id) == created["id"]
    await agent.close()


async def test_reports_before_hello_are_refused(
    control_plane: ControlPlaneProcess, server: Server
) -> None:
    agent = await FakeAgent.connect(control_plane, server.id, server.key, hello=False)
    await agent.send(CommandOutput(rid=3, command_id=uuid.uuid4(), seq=0, data="x"))
    error = await agent.expect(ErrorMessage)
    assert (error.code, error.ref) == ("invalid", "3")
    await roundtrip(agent)
    await agent.close()


async def test_sent_but_undelivered_command_is_redelivered_after_reconnect(
    control_plane: ControlPlaneProcess, server: Server
) -> None:
    first = await FakeAgent.connect(control_plane, server.id, server.key)
    pending = await create(control_plane, server, "echo pending")
    running = await create(control_plane, server, "sleep 100")
    done = await create(control_plane, server, "true")
    for _ in range(3):
        await first.expect(CommandRun)
    now = datetime.now(UTC)
    await first.send(
        CommandDelivered(rid=1, command_id=uuid.UUID(str(done["id"])), delivered_at=now)
    )
    await first.confirmed([1])
    await first.close()

    second = await FakeAgent.connect(
        control_plane, server.id, server.key, running=[uuid.UUID(str(running["id"]))]
    )
    run = await second.expect(CommandRun)
    assert str(run.command_id) == pending["id"]
    assert run.line == "echo pending"
    await roundtrip(second)
    assert not any(isinstance(m, CommandRun) for m in second.skipped)
    await second.close()


async def test_a_second_connection_replaces_the_first(
    control_plane: ControlPlaneProcess, server: Server
) -> None:
    first = await FakeAgent.connect(control_plane, server.id, server.key)
    second = await FakeAgent.connect(control_plane, server.id, server.key)
    await asyncio.wait_for(first.ws.wait_closed(), 10)
    assert first.ws.close_code == 4000
    created = await create(control_plane, server)
    assert str((await second.expect(CommandRun)).command_id) == created["id"]
    async with api(control_plane) as client:
        body = (await client.get(f"/api/servers/servers/{server.id}/")).json()
    assert body["is_connected"] is True
    await second.close()


async def test_scheduled_command_is_delivered_when_due(
    control_plane: ControlPlaneProcess, server: Server
) -> None:
    agent = await FakeAgent.connect(control_plane, server.id, server.key)
    due = datetime.now(UTC) + timedelta(seconds=1)
    created = await create(control_plane, server, "date", scheduled_at=due.isoformat())
    assert created["status"]["text"] == "Scheduled"  # type: ignore[index]
    run = await agent.expect(CommandRun, timeout=15)
    assert str(run.command_id) == created["id"]
    assert datetime.now(UTC) >= due - timedelta(milliseconds=50)
    await agent.close()


async def test_scheduled_command_due_while_offline_is_delivered_on_hello(
    control_plane: ControlPlaneProcess, server: Server
) -> None:
    due = datetime.now(UTC) + timedelta(seconds=0.5)
    created = await create(control_plane, server, "date", scheduled_at=due.isoformat())

    async def queued() -> bool:
        status = (await get_command(control_plane, str(created["id"])))["status"]
        return status["text"] == "Queued"  # type: ignore[index,no-any-return]

    await eventually(queued)  # it is due, observed through the API
    agent = await FakeAgent.connect(control_plane, server.id, server.key)
    assert str((await agent.expect(CommandRun)).command_id) == created["id"]
    await agent.close()


async def test_cancelled_scheduled_command_is_never_sent(
    control_plane: ControlPlaneProcess, server: Server
) -> None:
    agent = await FakeAgent.connect(control_plane, server.id, server.key)
    now = datetime.now(UTC)
    doomed = await create(
        control_plane, server, "doomed", scheduled_at=(now + timedelta(seconds=1)).isoformat()
    )
    async with api(control_plane) as client:
        response = await client.post(f"/api/events/commands/{doomed['id']}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"]["text"] == "Cancelled"
    later = await create(
        control_plane, server, "later", scheduled_at=(now + timedelta(seconds=1.5)).isoformat()
    )
    run = await agent.expect(CommandRun, timeout=15)
    assert str(run.command_id) == later["id"]
    assert not any(isinstance(m, CommandRun) for m in agent.skipped)
    await agent.close()


async def test_idle_agent_is_disconnected(
    control_plane_factory: Callable[[dict[str, str]], ControlPlaneProcess],
) -> None:
    cp = control_plane_factory({"CONTROLPLANE_AGENT_IDLE_TIMEOUT": "1"})
    server = cp.new_server()
    agent = await FakeAgent.connect(cp, server.id, server.key)
    async with asyncio.timeout(15):
        await agent.ws.wait_closed()
    assert agent.ws.close_code == 4001
    async with api(cp) as client:

        async def offline() -> bool:
            body = (await client.get(f"/api/servers/servers/{server.id}/")).json()
            return body["is_connected"] is False

        await eventually(offline)


async def test_deleted_server_is_disconnected_and_refused(
    control_plane: ControlPlaneProcess,
) -> None:
    server = control_plane.new_server()
    agent = await FakeAgent.connect(control_plane, server.id, server.key)
    async with api(control_plane) as client:
        response = await client.delete(f"/api/servers/servers/{server.id}/")
    assert response.status_code == 204
    async with asyncio.timeout(10):
        await agent.ws.wait_closed()
    assert agent.ws.close_code == 4003
    with pytest.raises(InvalidStatus) as info:
        await FakeAgent.connect(control_plane, server.id, server.key)
    assert info.value.response.status_code == 401


async def test_confirm_batches_under_load(
    control_plane: ControlPlaneProcess, server: Server
) -> None:
    agent = await FakeAgent.connect(control_plane, server.id, server.key)
    created = await create(control_plane, server, "yes")
    cid = uuid.UUID(str(created["id"]))
    rids = []
    for seq in range(2000):
        rid = agent.next_rid()
        rids.append(rid)
        await agent.send(CommandOutput(rid=rid, command_id=cid, seq=seq, data=f"{seq}\n"))
    confirms = 0
    seen: set[int] = set()
    async with asyncio.timeout(30):
        while len(seen) < len(rids):
            seen.update((await agent.expect(Confirm)).rids)
            confirms += 1
    assert seen == set(rids)
    assert confirms < len(rids)
    async with api(control_plane) as client:
        chunks = (await client.get(f"/api/events/commands/{cid}/chunks/?page_size=1")).json()
    assert chunks["count"] == 2000
    await agent.close()


async def test_undelivered_commands_survive_a_control_plane_crash(
    control_plane_factory: Callable[[dict[str, str]], ControlPlaneProcess],
) -> None:
    """SIGKILL of the control plane: on the agent's next hello, what it had sent but had
    no delivery report for is sent again; what was delivered or finished is not."""
    cp = control_plane_factory({})
    server = cp.new_server()
    first = await FakeAgent.connect(cp, server.id, server.key)
    lost = await create(cp, server, "echo lost in transit")
    done = await create(cp, server, "true")
    for _ in range(2):
        await first.expect(CommandRun)
    rid = first.next_rid()
    await first.send(
        CommandFinished(
            rid=rid,
            command_id=uuid.UUID(str(done["id"])),
            handled_at=datetime.now(UTC),
            elapsed_time=0.01,
            exit_code=0,
            success=True,
            result="",
        )
    )
    await first.confirmed([rid])
    # The loop would block in a synchronous kill; the restart keeps the db and the port.
    await asyncio.to_thread(cp.restart, kill=True)
    async with asyncio.timeout(15):
        await first.ws.wait_closed()

    second = await FakeAgent.connect(cp, server.id, server.key)
    run = await second.expect(CommandRun)
    assert (str(run.command_id), run.line) == (lost["id"], "echo lost in transit")
    await roundtrip(second)
    assert not any(isinstance(m, CommandRun) for m in second.skipped)
    assert (await get_command(cp, str(done["id"])))["handled_at"] is not None
    await second.close()
