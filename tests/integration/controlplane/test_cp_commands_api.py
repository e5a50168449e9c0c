"""The Commands API against the real control plane: create, errors, list, stream."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from fleetgate.controlplane.store.queries import ORDERING_FIELDS
from fleetgate.shared.protocol import (
    CommandAcked,
    CommandDelivered,
    CommandFinished,
    CommandOutput,
    CommandRun,
)
from tests.support.controlplane import REPO_ROOT, ControlPlaneProcess, FakeAgent, Server


JSON = dict[str, Any]


def api(cp: ControlPlaneProcess, token: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=cp.url, headers=cp.auth_headers(token), timeout=10)


@pytest.fixture
async def agent(control_plane: ControlPlaneProcess, server: Server) -> AsyncIterator[FakeAgent]:
    fake = await FakeAgent.connect(control_plane, server.id, server.key)
    yield fake
    await fake.close()


async def create(
    cp: ControlPlaneProcess,
    server: Server,
    line: str = "id",
    token: str | None = None,
    **extra: object,
) -> JSON:
    async with api(cp, token) as client:
        response = await client.post(
            "/api/events/commands/", json={"server": server.name, "line": line, **extra}
        )
    assert response.status_code == 201, response.text
    body: JSON = response.json()
    return body


async def make_user(cp: ControlPlaneProcess, username: str | None = None) -> tuple[JSON, str]:
    """A non-superuser and an API token a superuser issued them (ungated; their login
    is used to show that they can sign in)."""
    username = username or f"user-{uuid.uuid4().hex[:8]}"
    async with api(cp) as client:
        response = await client.post(
            "/api/iam/users/",
            json={
                "username": username,
                "email": f"{username}@example.com",
                "password": "pw-123456",
            },
        )
        assert response.status_code == 201, response.text
        user: JSON = response.json()
    async with httpx.AsyncClient(base_url=cp.url, timeout=10) as anon:
        response = await anon.post(
            "/api/auth/login/", json={"username": username, "password": "pw-123456"}
        )
        assert response.status_code == 200, response.text
        login = response.json()["token"]
    async with api(cp, login) as client:
        assert (await client.get("/api/auth/whoami/")).json()["username"] == username
    async with api(cp) as client:
        response = await client.post("/api/auth/tokens/", json={"name": "t", "user": username})
        assert response.status_code == 201, response.text
        assert response.json()["gated"] is False
    return user, str(response.json()["key"])


def assert_error(response: httpx.Response, status: int, code: str) -> JSON:
    assert response.status_code == status, response.text
    body: JSON = response.json()
    assert body["code"] == code
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert "Traceback" not in response.text
    return body


# -- create ----------------------------------------------------------------------------


async def test_create_returns_the_command_object(
    control_plane: ControlPlaneProcess, server: Server, agent: FakeAgent
) -> None:
    body = await create(
        control_plane,
        server,
        "df -h",
        username="ubuntu",
        groupname="adm",
        env={"A": "secret"},
        timeout=5,
    )
    assert set(body) == {
        "id", "shell", "line", "success", "exit_code", "result", "truncated", "status",
        "response_delay", "elapsed_time", "added_at", "scheduled_at", "delivered_at", "acked_at",
        "handled_at", "server", "server_name", "username", "groupname", "requested_by",
        "error_phase", "error_code", "timeout", "sudo",
    }  # fmt: skip
    assert body["server"] == server.id
    assert body["server_name"] == server.name
    assert (body["username"], body["groupname"], body["timeout"]) == ("ubuntu", "adm", 5.0)
    assert body["scheduled_at"] == body["added_at"]
    assert body["requested_by"] == {"id": 1, "username": "admin", "email": ""}
    assert "secret" not in json.dumps(body)
    run = await agent.expect(CommandRun)
    assert (run.groupname, run.env, run.timeout) == ("adm", {"A": "secret"}, 5.0)


@pytest.mark.parametrize(
    ("payload", "source"),
    [
        ({"line": "id", "shell": "bash"}, "shell"),
        ({"line": "id", "username": "bad user"}, "username"),
        ({"line": "id", "username": "-rf"}, "username"),
        ({"line": "id", "groupname": "a/b"}, "groupname"),
        ({"line": ""}, "line"),
        ({"line": "   "}, "line"),
        ({"line": "x" * 70_000}, "line"),
        ({"line": "a\x00b"}, "line"),
        ({"line": "id; id", "sudo": True}, "line"),
        ({"line": "id", "sudo": True, "username": "bob"}, "username"),
        ({"line": "id", "env": {"A": 1}}, "env.A"),
        ({"line": "id", "env": ["A"]}, "env"),
        ({"line": "id", "env": {"1BAD": "x"}}, "env"),
        ({"line": "id", "scheduled_at": "tomorrow"}, "scheduled_at"),
        ({"line": "id", "timeout": -1}, "timeout"),
        ({"line": "id", "timeout": "soon"}, "timeout"),
        ({}, "line"),
    ],
)
async def test_invalid_command(
    control_plane: ControlPlaneProcess, server: Server, payload: JSON, source: str
) -> None:
    async with api(control_plane) as client:
        response = await client.post(
            "/api/events/commands/", json={"server": server.name, **payload}
        )
    body = assert_error(response, 400, "INVALID_COMMAND")
    assert body["source"] == source


async def test_invalid_command_body_not_json(control_plane: ControlPlaneProcess) -> None:
    async with api(control_plane) as client:
        response = await client.post(
            "/api/events/commands/", content=b"{nope", headers={"Content-Type": "application/json"}
        )
    assert_error(response, 400, "INVALID_COMMAND")


async def test_server_not_found(control_plane: ControlPlaneProcess) -> None:
    async with api(control_plane) as client:
        response = await client.post("/api/events/commands/", json={"server": "nope", "line": "id"})
        assert_error(response, 404, "SERVER_NOT_FOUND")
        response = await client.post(
            "/api/events/commands/", json={"server": str(uuid.uuid4()), "line": "id"}
        )
        assert_error(response, 404, "SERVER_NOT_FOUND")
        assert_error(await client.get("/api/servers/servers/nope/"), 404, "SERVER_NOT_FOUND")


async def test_server_not_connected(control_plane: ControlPlaneProcess, server: Server) -> None:
    async with api(control_plane) as client:
        response = await client.post(
            "/api/events/commands/", json={"server": server.id, "line": "id"}
        )
    assert_error(response, 503, "SERVER_NOT_CONNECTED")
    # A scheduled command does not need the server.
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    body = await create(control_plane, server, scheduled_at=later)
    assert body["status"]["text"] == "Scheduled"
    assert body["status"]["cancellable"] is True


async def test_authentication_failed(control_plane: ControlPlaneProcess) -> None:
    async with httpx.AsyncClient(base_url=control_plane.url, timeout=10) as anon:
        for path in ("/api/events/commands/", "/api/auth/whoami/", "/api/servers/servers/"):
            assert_error(await anon.get(path), 401, "AUTHENTICATION_FAILED")
        bad = {"Authorization": 'token="fat_nope"'}
        assert_error(await anon.get("/api/auth/whoami/", headers=bad), 401, "AUTHENTICATION_FAILED")
        response = await anon.post("/api/auth/login/", json={"username": "admin", "password": "x"})
        assert_error(response, 401, "AUTHENTICATION_FAILED")


async def test_token_acl(
    control_plane: ControlPlaneProcess, server: Server, agent: FakeAgent
) -> None:
    async with api(control_plane) as client:
        response = await client.post(
            "/api/auth/tokens/",
            json={"name": "ci", "command_acl": ["uname *", "systemctl status *"]},
        )
    assert response.status_code == 201, response.text
    token = response.json()["key"]
    assert response.json()["command_acl"] == ["uname *", "systemctl status *"]
    async with api(control_plane, token) as client:
        for line in [
            "uname; rm -rf /",
            "uname $(rm x)",
            "uname `x`",
            "uname\nid",
            "uname && id",
            "uname | sh",
            "uname > /x",
            "id",
        ]:
            response = await client.post(
                "/api/events/commands/", json={"server": server.name, "line": line}
            )
            assert_error(response, 403, "API_TOKEN_ACL_NOT_ALLOWED")
        # A restricted token cannot mint itself an unrestricted one.
        assert_error(
            await client.post("/api/auth/tokens/", json={"name": "escape"}),
            403,
            "PERMISSION_DENIED",
        )
        response = await client.post(
            "/api/iam/users/", json={"username": "escape", "password": "x", "is_superuser": True}
        )
        assert_error(response, 403, "PERMISSION_DENIED")
        tokens = (await client.get("/api/auth/tokens/")).json()
        response = await client.delete(f"/api/auth/tokens/{tokens[0]['id']}/")
        assert_error(response, 403, "PERMISSION_DENIED")
    body = await create(control_plane, server, "uname -a", token=token)
    assert (await agent.expect(CommandRun)).line == "uname -a"
    assert body["line"] == "uname -a"


async def test_command_not_found(
    control_plane: ControlPlaneProcess, server: Server, agent: FakeAgent
) -> None:
    async with api(control_plane) as client:
        for path in (
            f"/api/events/commands/{uuid.uuid4()}/",
            "/api/events/commands/not-a-uuid/",
            f"/api/events/commands/{uuid.uuid4()}/chunks/",
            f"/api/events/commands/{uuid.uuid4()}/stream/",
        ):
            assert_error(await client.get(path), 404, "COMMAND_NOT_FOUND")
        response = await client.post(f"/api/events/commands/{uuid.uuid4()}/cancel/")
        assert_error(response, 404, "COMMAND_NOT_FOUND")
    # Another user's command is not visible to a non-superuser.
    mine = await create(control_plane, server)
    _user, token = await make_user(control_plane)
    async with api(control_plane, token) as client:
        assert_error(
            await client.get(f"/api/events/commands/{mine['id']}/"), 404, "COMMAND_NOT_FOUND"
        )


async def test_cancel(control_plane: ControlPlaneProcess, server: Server, agent: FakeAgent) -> None:
    sent = await create(control_plane, server)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    scheduled = await create(control_plane, server, scheduled_at=later)
    async with api(control_plane) as client:
        response = await client.post(f"/api/events/commands/{sent['id']}/cancel/")
        assert_error(response, 409, "EVENT_COMMAND_ALREADY_SENT")
        response = await client.post(f"/api/events/commands/{scheduled['id']}/cancel/")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == {
            "text": "Cancelled",
            "color": "secondary",
            "cancellable": False,
            "message": response.json()["status"]["message"],
        }
        again = await client.post(f"/api/events/commands/{scheduled['id']}/cancel/")
        assert again.status_code == 200


async def test_permission_denied(control_plane: ControlPlaneProcess) -> None:
    _user, token = await make_user(control_plane)
    async with api(control_plane, token) as client:
        response = await client.post("/api/servers/servers/register/", json={"name": "x-srv"})
        assert_error(response, 403, "PERMISSION_DENIED")
        assert_error(await client.get("/api/iam/users/"), 403, "PERMISSION_DENIED")
        response = await client.post(
            "/api/iam/users/", json={"username": "evil", "is_superuser": True}
        )
        assert_error(response, 403, "PERMISSION_DENIED")


async def test_invalid_request(control_plane: ControlPlaneProcess) -> None:
    async with api(control_plane) as client:
        for query in (
            "page_size=101",
            "page_size=0",
            "page=0",
            "page=x",
            "ordering=line",
            "server=web",
            "requested_by=x",
            "requested_by_isnull=maybe",
            "is_scheduled=2",
        ):
            response = await client.get(f"/api/events/commands/?{query}")
            assert_error(response, 400, "INVALID_REQUEST")
        response = await client.post("/api/servers/servers/register/", json={"name": "bad name"})
        assert_error(response, 400, "INVALID_REQUEST")


# -- list ------------------------------------------------------------------------------


async def drive(agent: FakeAgent, command_id: str, **stamps: datetime) -> None:
    """Report delivered/acked/finished with the given timestamps."""
    cid = uuid.UUID(command_id)
    reports: list[CommandDelivered | CommandAcked | CommandFinished] = []
    if "delivered_at" in stamps:
        reports.append(
            CommandDelivered(
                rid=agent.next_rid(), command_id=cid, delivered_at=stamps["delivered_at"]
            )
        )
    if "acked_at" in stamps:
        reports.append(
            CommandAcked(rid=agent.next_rid(), command_id=cid, acked_at=stamps["acked_at"])
        )
    if "handled_at" in stamps:
        reports.append(
            CommandFinished(
                rid=agent.next_rid(),
                command_id=cid,
                handled_at=stamps["handled_at"],
                elapsed_time=0.5,
                exit_code=0,
                success=True,
                result="",
            )
        )
    for report in reports:
        await agent.send(report)
    await agent.confirmed(r.rid for r in reports)


async def list_ids(cp: ControlPlaneProcess, query: str, token: str | None = None) -> list[str]:
    async with api(cp, token) as client:
        response = await client.get(f"/api/events/commands/?page_size=100&{query}")
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["results"]]


BASE = datetime(2024, 1, 1, tzinfo=UTC)
# Rank of each of five commands (created in this order) for each field; None: not reported.
RANKS: dict[str, list[int | None]] = {
    "added_at": [0, 1, 2, 3, 4],
    "scheduled_at": [3, 0, 4, 1, 2],
    "delivered_at": [1, 3, 0, 2, None],
    "acked_at": [2, 1, 3, 0, None],
    "handled_at": [0, 2, 1, 3, None],
}


async def test_every_ordering(
    control_plane: ControlPlaneProcess, server: Server, agent: FakeAgent
) -> None:
    ids = []
    for i in range(5):
        scheduled = BASE + timedelta(hours=RANKS["scheduled_at"][i] or 0)
        body = await create(control_plane, server, f"cmd {i}", scheduled_at=scheduled.isoformat())
        ids.append(body["id"])
        stamps = {
            field: BASE + timedelta(days=1, hours=rank)
            for field in ("delivered_at", "acked_at", "handled_at")
            if (rank := RANKS[field][i]) is not None
        }
        await drive(agent, body["id"], **stamps)
    for field in ORDERING_FIELDS:
        ranks = RANKS[field]
        ranked = sorted((r, cid) for r, cid in zip(ranks, ids, strict=True) if r is not None)
        missing = [cid for r, cid in zip(ranks, ids, strict=True) if r is None]
        asc = [cid for _, cid in ranked] + missing
        desc = [cid for _, cid in reversed(ranked)] + missing
        assert await list_ids(control_plane, f"server={server.id}&ordering={field}") == asc, field
        assert await list_ids(control_plane, f"server={server.id}&ordering=-{field}") == desc, field
    # The default is -scheduled_at.
    assert await list_ids(control_plane, f"server={server.id}") == await list_ids(
        control_plane, f"server={server.id}&ordering=-scheduled_at"
    )


async def test_every_filter(
    control_plane: ControlPlaneProcess, server: Server, agent: FakeAgent
) -> None:
    user, user_token = await make_user(control_plane)
    other = control_plane.new_server()
    other_agent = await FakeAgent.connect(control_plane, other.id, other.key)
    service_token = await asyncio.to_thread(service_token_for, control_plane)

    by_admin = await create(control_plane, server, "echo needle-alpha")
    by_user = await create(control_plane, server, "uptime", token=user_token)
    by_service = await create(control_plane, other, "hostname", token=service_token)
    future = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    scheduled = await create(control_plane, other, "reboot", scheduled_at=future)
    await other_agent.close()
    assert by_service["requested_by"] is None
    mine = {by_admin["id"], by_user["id"], by_service["id"], scheduled["id"]}

    async def ids(query: str) -> set[str]:
        return set(await list_ids(control_plane, query)) & mine

    assert await ids(f"server={server.id}") == {by_admin["id"], by_user["id"]}
    assert await ids(f"server={other.id}") == {by_service["id"], scheduled["id"]}
    assert await ids("shell=system") == mine
    assert await ids("shell=bash") == set()
    assert await ids(f"requested_by={user['id']}") == {by_user["id"]}
    assert await ids("requested_by_isnull=true") == {by_service["id"]}
    assert await ids("requested_by_isnull=false") == mine - {by_service["id"]}
    assert await ids("is_scheduled=true") == {scheduled["id"]}
    assert await ids("is_scheduled=false") == mine - {scheduled["id"]}
    assert await ids("search=NEEDLE-ALPHA") == {by_admin["id"]}
    assert await ids(f"search={other.name.upper()}") == {by_service["id"], scheduled["id"]}
    assert await ids(f"search={user['username']}") == {by_user["id"]}
    assert await ids(f"server={other.id}&is_scheduled=false") == {by_service["id"]}
    # A non-superuser sees only their own commands.
    assert set(await list_ids(control_plane, "", token=user_token)) == {by_user["id"]}


def service_token_for(cp: ControlPlaneProcess) -> str:
    """A service token made with ``fleetgate-controlplane token create --service``."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetgate.controlplane",
            "token",
            "create",
            "--service",
            "ci",
            "--database-url",
            cp.database_url,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.strip()


async def test_pagination(
    control_plane: ControlPlaneProcess, server: Server, agent: FakeAgent
) -> None:
    ids = [(await create(control_plane, server, f"echo {i}"))["id"] for i in range(17)]
    async with api(control_plane) as client:
        first = (await client.get(f"/api/events/commands/?server={server.id}")).json()
        assert first["count"] == 17
        assert len(first["results"]) == 15
        assert first["previous"] is None
        assert first["next"].startswith(control_plane.url + "/api/events/commands/?")
        assert f"server={server.id}" in first["next"]
        second = (await client.get(first["next"])).json()
        assert len(second["results"]) == 2
        assert second["next"] is None
        assert second["previous"] == f"{control_plane.url}/api/events/commands/?server={server.id}"
        got = [r["id"] for r in first["results"] + second["results"]]
        assert sorted(got) == sorted(ids)
        assert got == list(reversed(ids))  # -scheduled_at
        big = (await client.get(f"/api/events/commands/?server={server.id}&page_size=100")).json()
        assert len(big["results"]) == 17
        assert big["next"] is None
        small = (
            await client.get(f"/api/events/commands/?server={server.id}&page_size=5&page=2")
        ).json()
        assert [r["id"] for r in small["results"]] == got[5:10]
        assert "page=3" in small["next"]
        assert "page_size=5" in small["next"]
        past = (await client.get(f"/api/events/commands/?server={server.id}&page=9")).json()
        assert past["results"] == []
        assert_error(
            await client.get(f"/api/events/commands/?server={server.id}&page_size=101"),
            400,
            "INVALID_REQUEST",
        )


# -- output ----------------------------------------------------------------------------


async def read_stream(cp: ControlPlaneProcess, command_id: str, query: str = "") -> list[JSON]:
    path = f"/api/events/commands/{command_id}/stream/?{query}"
    async with api(cp) as client, client.stream("GET", path) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) async for line in response.aiter_lines() if line]


async def test_stream_live_then_finished(
    control_plane: ControlPlaneProcess, server: Server, agent: FakeAgent
) -> None:
    created = await create(control_plane, server, "seq 3")
    cid = uuid.UUID(created["id"])
    await agent.expect(CommandRun)
    rid = agent.next_rid()
    await agent.send(CommandOutput(rid=rid, command_id=cid, seq=0, data="1\n"))
    await agent.confirmed([rid])
    async with asyncio.timeout(20):
        reader = asyncio.create_task(read_stream(control_plane, created["id"]))
        # Chunks arrive while the client is reading (one out of order).
        for seq, data in [(2, "3\n"), (1, "2\n")]:
            rid = agent.next_rid()
            await agent.send(CommandOutput(rid=rid, command_id=cid, seq=seq, data=data))
            await agent.confirmed([rid])
        assert not reader.done()
        await drive(agent, created["id"], handled_at=datetime.now(UTC))
        lines = await reader
    assert lines[:-1] == [
        {"event": "output", "seq": 0, "content": "1\n"},
        {"event": "output", "seq": 1, "content": "2\n"},
        {"event": "output", "seq": 2, "content": "3\n"},
    ]
    assert lines[-1]["event"] == "finished"
    assert lines[-1]["command"]["id"] == created["id"]
    assert lines[-1]["command"]["status"]["text"] == "Success"
    # Already finished: everything at once, from seq__gte.
    again = await asyncio.wait_for(read_stream(control_plane, created["id"], "seq__gte=2"), 10)
    assert again[0] == {"event": "output", "seq": 2, "content": "3\n"}
    assert again[1]["event"] == "finished"
    async with api(control_plane) as client:
        page = (
            await client.get(f"/api/events/commands/{cid}/chunks/?seq__gte=1&seq__lte=1")
        ).json()
    assert page["results"] == [{"seq": 1, "content": "2\n"}]


async def test_a_streaming_create_answers_with_the_command_then_its_output(
    control_plane: ControlPlaneProcess, server: Server, agent: FakeAgent
) -> None:
    """POST ?stream=true: a `created` line, the output, the final line, in one request."""

    async def run_streaming() -> tuple[int, list[JSON]]:
        async with (
            api(control_plane) as client,
            client.stream(
                "POST",
                "/api/events/commands/?stream=true",
                json={"server": server.name, "line": "echo hi"},
            ) as response,
        ):
            lines = [json.loads(line) async for line in response.aiter_lines() if line]
            return response.status_code, lines

    async with asyncio.timeout(20):
        reader = asyncio.create_task(run_streaming())
        run = await agent.expect(CommandRun)
        assert isinstance(run, CommandRun)
        rid = agent.next_rid()
        await agent.send(CommandOutput(rid=rid, command_id=run.command_id, seq=0, data="hi\n"))
        await agent.confirmed([rid])
        now = datetime.now(UTC)
        await drive(agent, str(run.command_id), delivered_at=now, acked_at=now, handled_at=now)
        status, lines = await reader
    assert status == 201
    assert [line["event"] for line in lines] == ["created", "output", "finished"]
    assert lines[0]["command"]["id"] == str(run.command_id)
    assert lines[1] == {"event": "output", "seq": 0, "content": "hi\n"}
    assert lines[2]["command"]["status"]["text"] == "Success"


async def test_a_streaming_create_refused_is_a_plain_error(
    control_plane: ControlPlaneProcess, server: Server
) -> None:
    """Validation happens before streaming starts: errors keep their status and code."""
    async with api(control_plane) as client:
        response = await client.post(
            "/api/events/commands/?stream=true", json={"server": server.name, "line": ""}
        )
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_COMMAND"


async def test_stream_of_cancelled_command_ends(
    control_plane: ControlPlaneProcess, server: Server
) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    created = await create(control_plane, server, scheduled_at=later)
    async with asyncio.timeout(20):
        reader = asyncio.create_task(read_stream(control_plane, created["id"]))
        async with api(control_plane) as client:
            # The reader may not be subscribed yet; either way it must end with the cancel.
            response = await client.post(f"/api/events/commands/{created['id']}/cancel/")
            assert response.status_code == 200
        lines = await reader
    assert [line["event"] for line in lines] == ["finished"]
    assert lines[0]["command"]["status"]["text"] == "Cancelled"
