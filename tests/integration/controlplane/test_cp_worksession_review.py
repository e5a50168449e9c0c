"""Reviewing requests over HTTP: approve with narrowed scopes and servers, and searching
the session list (what the console's approval queue and search use)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.accounts import new_login
from tests.support.controlplane import ControlPlaneProcess, FakeAgent, Server


SESSIONS = "/api/work-sessions/sessions/"


@pytest.fixture
async def two_online(control_plane: ControlPlaneProcess) -> AsyncIterator[tuple[Server, Server]]:
    servers = [control_plane.new_server(f"rv-{uuid.uuid4().hex[:10]}") for _ in range(2)]
    agents = [await FakeAgent.connect(control_plane, s.id, s.key) for s in servers]
    try:
        yield servers[0], servers[1]
    finally:
        for agent in agents:
            await agent.close()


async def test_approve_narrows_scopes_and_servers(
    control_plane: ControlPlaneProcess, two_online: tuple[Server, Server]
) -> None:
    first, second = two_online
    _, _, token = new_login(control_plane)
    with control_plane.client(token) as user, control_plane.client() as admin:
        created = user.post(
            SESSIONS,
            json={"description": "deploy", "servers": [first.name, second.name], "duration": "1h"},
        )
        assert created.status_code == 201, created.text
        session = created.json()
        url = f"{SESSIONS}{session['id']}/approve/"

        # Only what was requested, and at least one of each; the user may not approve.
        assert user.post(url, json={"scopes": ["websh"]}).status_code == 403
        bodies: list[dict[str, list[str]]] = [
            {"scopes": ["tunnel"]},
            {"scopes": []},
            {"servers": []},
            {"servers": ["no-such-server"]},
        ]
        for body in bodies:
            refused = admin.post(url, json=body)
            assert refused.status_code == 400, (body, refused.text)
        assert admin.get(f"{SESSIONS}{session['id']}/").json()["status"] == "pending"

        approved = admin.post(url, json={"scopes": ["websh", "command"], "servers": [second.id]})
        assert approved.status_code == 200, approved.text
        out = approved.json()
        assert out["status"] == "active"
        assert out["scopes"] == ["websh", "command"]
        assert [s["id"] for s in out["servers"]] == [second.id]
        items = admin.get(f"{SESSIONS}{session['id']}/timeline/").json()["results"]
        adjust = next(i for i in items if i["type"] == "adjust")
        assert adjust["scopes"]["to"] == ["websh", "command"]
        assert adjust["servers"] == {"from": [first.id, second.id], "to": [second.id]}
        again = admin.post(url, json={"scopes": ["websh"]})
        assert again.status_code == 409, again.text

        # A plain approve (no body) still works as before.
        plain = user.post(
            SESSIONS, json={"description": "x", "servers": [first.name], "duration": "1h"}
        ).json()
        assert admin.post(f"{SESSIONS}{plain['id']}/approve/").json()["status"] == "active"


async def test_search_matches_purpose_user_server_and_id(
    control_plane: ControlPlaneProcess, two_online: tuple[Server, Server]
) -> None:
    first, second = two_online
    _, username, token = new_login(control_plane)
    marker = uuid.uuid4().hex[:8]
    with control_plane.client(token) as user, control_plane.client() as admin:
        a = user.post(
            SESSIONS,
            json={
                "description": f"rotate {marker} certs",
                "servers": [first.name],
                "duration": "1h",
            },
        ).json()
        b = user.post(
            SESSIONS, json={"description": "100%_done", "servers": [second.name], "duration": "1h"}
        ).json()

        def found(client_q: str, who: str = "user") -> set[str]:
            client = user if who == "user" else admin
            answer = client.get(SESSIONS, params={"q": client_q, "page_size": 100})
            assert answer.status_code == 200, answer.text
            return {s["id"] for s in answer.json()["results"]}

        assert found(marker.upper()) == {a["id"]}
        assert found(second.name) == {b["id"]}
        assert found(username) == {a["id"], b["id"]}
        assert found(a["id"][:8]) == {a["id"]}
        assert found("100%_") == {b["id"]}  # LIKE wildcards are literal
        assert found("0%") == {b["id"]}
        assert found("%") == {b["id"]}
        assert found("nothing-matches-this") == set()
        # Search never widens visibility: another user's session stays hidden.
        _, _, other = new_login(control_plane)
        with control_plane.client(other) as stranger:
            answer = stranger.get(SESSIONS, params={"q": marker})
            assert answer.json()["results"] == []
        assert found(marker, "admin") == {a["id"]}


async def test_tunnel_only_on_servers_whose_owner_enabled_it(
    control_plane: ControlPlaneProcess,
) -> None:
    plain = control_plane.new_server(f"rv-{uuid.uuid4().hex[:10]}")
    open_ = control_plane.new_server(f"rv-{uuid.uuid4().hex[:10]}")
    agents = [
        await FakeAgent.connect(control_plane, plain.id, plain.key),
        await FakeAgent.connect(control_plane, open_.id, open_.key, features=["tunnel"]),
    ]
    try:
        _, _, token = new_login(control_plane)
        with control_plane.client(token) as user:
            server = user.get(f"/api/servers/servers/{open_.name}/").json()
            assert server["features"] == ["tunnel"]
            assert user.get(f"/api/servers/servers/{plain.name}/").json()["features"] == []

            def request(servers: list[str], scopes: list[str]) -> httpx.Response:
                body = {"description": "x", "servers": servers, "scopes": scopes, "duration": "1h"}
                return user.post(SESSIONS, json=body)

            assert request([open_.name], ["tunnel", "command"]).status_code == 201
            for servers, scopes in (
                ([plain.name], ["tunnel"]),
                ([open_.name, plain.name], ["tunnel"]),
                ([open_.name], ["editor"]),  # no agent offers the editor yet
            ):
                refused = request(servers, scopes)
                assert refused.status_code == 400, refused.text
                assert refused.json()["source"] == "scopes"
                assert "not enabled on server" in refused.json()["detail"]
            assert request([plain.name], ["command"]).status_code == 201
    finally:
        for agent in agents:
            await agent.close()
