"""Issue 14, part A: the approval gate holds on every path (docs/security.md).

One test per finding, against a real control plane subprocess and a fake agent on a real
websocket: self-minted tokens are gated (1), token ACLs bind every operation and env (2),
an approved session is frozen (3), non-superusers run as their own account (4).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from fleetgate.shared.protocol import CommandRun
from tests.support.accounts import new_login
from tests.support.controlplane import ControlPlaneProcess, FakeAgent, Server


JSON = dict[str, Any]
SESSIONS = "/api/work-sessions/sessions/"
COMMANDS = "/api/events/commands/"


@pytest.fixture
async def agent(control_plane: ControlPlaneProcess, server: Server) -> AsyncIterator[FakeAgent]:
    """``server`` connected through a fake agent (sessions and commands need it)."""
    fake = await FakeAgent.connect(control_plane, server.id, server.key)
    try:
        yield fake
    finally:
        await fake.close()


def refused(response: httpx.Response, status: int, code: str) -> JSON:
    """The ``{code, detail}`` body of a refusal, after checking both."""
    assert response.status_code == status, response.text
    body: JSON = response.json()
    assert body["code"] == code, body
    assert body["detail"]
    return body


def login_token(cp: ControlPlaneProcess, **kwargs: Any) -> tuple[str, str]:
    """``(username, login token)`` of a new user."""
    _uid, username, token = new_login(cp, **kwargs)
    return username, token


async def ws_refusal(cp: ControlPlaneProcess, path: str, token: str | None) -> tuple[int, JSON]:
    """Open a websocket that must be refused; its HTTP status and ``{code, detail}``."""
    headers = {} if token is None else cp.auth_headers(token)
    url = f"ws://127.0.0.1:{cp.port}{path}"
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(url, additional_headers=headers, open_timeout=10):
            pass
    response = info.value.response
    body = json.loads(response.body or b"{}")
    return response.status_code, body


# -- finding 1: self-minted tokens skip approval ---------------------------------------


async def test_a_token_a_user_mints_for_themself_is_gated_like_their_login(
    control_plane: ControlPlaneProcess, server: Server, agent: FakeAgent
) -> None:
    _name, login = login_token(control_plane, server_username="carol")
    with control_plane.client(login) as client:
        minted = client.post("/api/auth/tokens/", json={"name": "mine"})
        assert minted.status_code == 201, minted.text
    token = minted.json()["key"]
    with control_plane.client(token) as client:
        response = client.post(COMMANDS, json={"server": server.name, "line": "id -un"})
        refused(response, 403, "work_session_required")
    assert minted.json()["gated"] is True
    with control_plane.client(login) as client:
        # Asking for a bypass is refused: no principal makes itself more powerful.
        refused(
            client.post("/api/auth/tokens/", json={"name": "bypass", "gated": False}),
            403,
            "PERMISSION_DENIED",
        )
        refused(
            client.post("/api/auth/tokens/", json={"name": "x", "user": "admin"}),
            403,
            "PERMISSION_DENIED",
        )
    with control_plane.client(token) as client:
        assert client.get("/api/auth/whoami/").json()["gated"] is True
        # A gated token cannot mint an ungated one either.
        refused(
            client.post("/api/auth/tokens/", json={"name": "again", "gated": False}),
            403,
            "PERMISSION_DENIED",
        )
        listed = client.get("/api/auth/tokens/").json()
        assert {t["name"]: t["gated"] for t in listed} == {"login": True, "mine": True}
    # A superuser's token bypasses work sessions, bounded by its ACL.
    with control_plane.client() as admin:
        issued = admin.post("/api/auth/tokens/", json={"name": "ops"})
        assert issued.status_code == 201, issued.text
        assert issued.json()["gated"] is False
    with control_plane.client(issued.json()["key"]) as ops:
        created = ops.post(COMMANDS, json={"server": server.name, "line": "id -un"})
        assert created.status_code == 201, created.text
    assert (await agent.expect(CommandRun)).username == "root"


# -- finding 2: token ACLs bind only the Commands API line -----------------------------


async def test_a_token_acl_binds_terminals_transfers_tunnels_and_env(
    control_plane: ControlPlaneProcess, server: Server, agent: FakeAgent
) -> None:
    with control_plane.client() as admin:
        made = admin.post("/api/auth/tokens/", json={"name": "ci", "command_acl": ["uptime"]})
        assert made.status_code == 201, made.text
    token = made.json()["key"]
    with control_plane.client(token) as ci:
        refused(
            ci.post("/api/websh/terminals/", json={"server": server.name, "username": "root"}),
            403,
            "API_TOKEN_ACL_NOT_ALLOWED",
        )
        refused(
            ci.post("/api/tunnels/", json={"server": server.name, "remote_port": 22}),
            403,
            "API_TOKEN_ACL_NOT_ALLOWED",
        )
        for name in ("PATH", "LD_PRELOAD"):
            body = refused(
                ci.post(
                    COMMANDS,
                    json={"server": server.name, "line": "uptime", "env": {name: "/tmp/x"}},
                ),
                400,
                "INVALID_COMMAND",
            )
            assert name in body["detail"]
        # Harmless names need the ACL's say-so too.
        body = refused(
            ci.post(COMMANDS, json={"server": server.name, "line": "uptime", "env": {"A": "1"}}),
            403,
            "API_TOKEN_ACL_NOT_ALLOWED",
        )
        assert "A" in body["detail"]
        assert ci.post(COMMANDS, json={"server": server.name, "line": "uptime"}).status_code == 201
    query = f"/ws/files/?server={server.name}&op=download&path=/etc/shadow&user=root"
    status, body = await ws_refusal(control_plane, query, token)
    assert (status, body["code"]) == (403, "API_TOKEN_ACL_NOT_ALLOWED")
    run = await agent.expect(CommandRun)
    assert (run.line, dict(run.env)) == ("uptime", {})
    assert made.json()["acl"]["command"] == ["uptime"]


async def test_an_acl_names_each_operation_it_allows(
    control_plane: ControlPlaneProcess, server: Server, agent: FakeAgent
) -> None:
    acl = {"command": ["env"], "env": ["LANG"], "tunnel": [5432], "webftp": ["/srv/site"]}
    with control_plane.client() as admin:
        made = admin.post("/api/auth/tokens/", json={"name": "deploy", "acl": acl})
        assert made.status_code == 201, made.text
        bad = admin.post("/api/auth/tokens/", json={"name": "x", "acl": {"tunnel": [0]}})
        refused(bad, 400, "INVALID_REQUEST")
        bad = admin.post("/api/auth/tokens/", json={"name": "x", "acl": {"shell": True}})
        refused(bad, 400, "INVALID_REQUEST")
    token = made.json()["key"]
    with control_plane.client(token) as deploy:
        ok = deploy.post(
            COMMANDS, json={"server": server.name, "line": "env", "env": {"LANG": "C"}}
        )
        assert ok.status_code == 201, ok.text
        refused(
            deploy.post("/api/tunnels/", json={"server": server.name, "remote_port": 22}),
            403,
            "API_TOKEN_ACL_NOT_ALLOWED",
        )
        made_tunnel = deploy.post(
            "/api/tunnels/", json={"server": server.name, "remote_port": 5432}
        )
        assert made_tunnel.status_code == 201, made_tunnel.text
        refused(
            deploy.post("/api/websh/terminals/", json={"server": server.name}),
            403,
            "API_TOKEN_ACL_NOT_ALLOWED",
        )
    files = f"/ws/files/?server={server.name}"
    for outside in (
        "&op=download&path=/srv/site/../../etc/shadow",
        "&op=upload&path=/srv/site&name=../../etc/cron.d/x",
    ):
        status, body = await ws_refusal(control_plane, files + outside, token)
        assert (status, body["code"]) == (403, "API_TOKEN_ACL_NOT_ALLOWED"), outside
    assert (await agent.expect(CommandRun)).env == {"LANG": "C"}


async def test_no_principal_sets_loader_variables(
    control_plane: ControlPlaneProcess, server: Server, agent: FakeAgent
) -> None:
    with control_plane.client() as admin:
        for name in ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "BASH_ENV", "IFS", "NODE_OPTIONS"):
            response = admin.post(
                COMMANDS, json={"server": server.name, "line": "id", "env": {name: "x"}}
            )
            assert name in refused(response, 400, "INVALID_COMMAND")["detail"]
        ok = admin.post(COMMANDS, json={"server": server.name, "line": "id", "env": {"TZ": "UTC"}})
        assert ok.status_code == 201, ok.text
    assert (await agent.expect(CommandRun)).env == {"TZ": "UTC"}


# -- finding 3: an approved session can be rewritten by its own user -------------------


async def test_an_approved_session_is_frozen(
    control_plane: ControlPlaneProcess, server: Server, agent: FakeAgent
) -> None:
    username, login = login_token(control_plane, server_username="dave")
    with control_plane.client(login) as user, control_plane.client() as admin:
        asked = user.post(
            SESSIONS,
            json={
                "description": "restart nginx",
                "servers": [server.name],
                "scopes": ["command", "sudo"],
                "sudo_policies": [{"commands": ["systemctl restart nginx"]}],
                "duration": "1h",
            },
        )
        assert asked.status_code == 201, asked.text
        sid = asked.json()["id"]
        approved = admin.post(f"{SESSIONS}{sid}/approve/")
        assert approved.json()["status"] == "active", approved.text
        patched = user.patch(
            f"{SESSIONS}{sid}/", json={"sudo_policies": [{"commands": ["/bin/sh *"]}]}
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["status"] == "pending"
        # Until approved again it cannot be used: the rewritten pattern never runs.
        response = user.post(
            COMMANDS,
            json={
                "server": server.name,
                "line": "/bin/sh -c id",
                "sudo": True,
                "work_session": sid,
            },
        )
        refused(response, 403, "work_session_not_active")
        items = user.get(f"{SESSIONS}{sid}/timeline/", params={"page_size": 100}).json()["results"]
        update = next(i for i in items if i["type"] == "update")
        assert update["actor"] == username
        change = update["changes"]["sudo_policies"]
        assert change["before"][0]["commands"] == ["systemctl restart nginx"]
        assert change["after"][0]["commands"] == ["/bin/sh *"]
        assert ("amend", "pending") in [
            (i["action"], i["to"]) for i in items if i["type"] == "status_change"
        ]
        assert admin.post(f"{SESSIONS}{sid}/approve/").json()["status"] == "active"
        # Extending is a change too; and never beyond the maximum from the start.
        extended = user.post(f"{SESSIONS}{sid}/extend/", json={"duration": "30m"})
        assert extended.json()["status"] == "pending", extended.text
        assert admin.post(f"{SESSIONS}{sid}/approve/").json()["status"] == "active"
        too_long = user.post(f"{SESSIONS}{sid}/extend/", json={"duration": "3h"})
        refused(too_long, 400, "INVALID_REQUEST")
        # A superuser's own session stays approved when they change it.
        own = admin.post(
            SESSIONS,
            json={
                "description": "x",
                "servers": [server.name],
                "scopes": ["command"],
                "duration": "1h",
            },
        ).json()
        changed = admin.patch(f"{SESSIONS}{own['id']}/", json={"scopes": ["command", "websh"]})
        assert changed.json()["status"] == "active", changed.text
        assert changed.json()["scopes"] == ["websh", "command"]


# -- finding 4: non-superusers run as root by default ----------------------------------


async def test_a_non_superuser_runs_as_their_own_account(
    control_plane: ControlPlaneProcess, server: Server, agent: FakeAgent
) -> None:
    username, login = login_token(control_plane)
    with control_plane.client() as admin:
        session = admin.post(
            SESSIONS,
            json={
                "description": "logs",
                "servers": [server.name],
                "scopes": ["command", "websh", "webftp"],
                "assigned_user": username,
                "duration": "1h",
            },
        ).json()
    sid = session["id"]
    line = {"server": server.name, "line": "id; head -c 40 /etc/shadow", "work_session": sid}
    with control_plane.client(login) as user:
        body = refused(user.post(COMMANDS, json=line), 403, "SERVER_USERNAME_NOT_SET")
        assert "ask a superuser to set your server username" in body["detail"]
        with control_plane.client() as admin:
            mapped = admin.patch(f"/api/iam/users/{username}/", json={"server_username": "erin"})
            assert mapped.json()["server_username"] == "erin", mapped.text
            refused(
                admin.patch(f"/api/iam/users/{username}/", json={"server_username": "root"}),
                400,
                "INVALID_REQUEST",
            )
        assert user.get("/api/auth/whoami/").json()["server_username"] == "erin"
        for who in ("root", "daemon"):
            refused(
                user.post(COMMANDS, json={**line, "username": who}), 403, "IDENTITY_NOT_ALLOWED"
            )
        refused(
            user.post(COMMANDS, json={**line, "groupname": "root"}), 403, "IDENTITY_NOT_ALLOWED"
        )
        refused(
            user.post(
                "/api/websh/terminals/",
                json={"server": server.name, "username": "root", "work_session": sid},
            ),
            403,
            "IDENTITY_NOT_ALLOWED",
        )
        terminal = user.post(
            "/api/websh/terminals/", json={"server": server.name, "work_session": sid}
        )
        assert terminal.json()["username"] == "erin", terminal.text
        created = user.post(COMMANDS, json=line)
        assert created.status_code == 201, created.text
        assert created.json()["username"] == "erin"
    path = (
        f"/ws/files/?server={server.name}&op=download&path=/etc/shadow&user=root&work_session={sid}"
    )
    status, body = await ws_refusal(control_plane, path, login)
    assert (status, body["code"]) == (403, "IDENTITY_NOT_ALLOWED")
    run = await agent.expect(CommandRun)
    assert (run.username, run.groupname) == ("erin", None)


async def test_tokens_of_the_old_kind_keep_working(
    control_plane: ControlPlaneProcess, server: Server, agent: FakeAgent
) -> None:
    """``command_acl`` alone still works, and a superuser's token still defaults to root."""
    with control_plane.client() as admin:
        made = admin.post("/api/auth/tokens/", json={"name": "old", "command_acl": ["uname *"]})
        assert made.status_code == 201, made.text
    with control_plane.client(made.json()["key"]) as old:
        assert (
            old.post(COMMANDS, json={"server": server.name, "line": "uname -a"}).status_code == 201
        )
        refused(
            old.post(COMMANDS, json={"server": server.name, "line": "id"}),
            403,
            "API_TOKEN_ACL_NOT_ALLOWED",
        )
    run = await agent.expect(CommandRun)
    assert (run.line, run.username) == ("uname -a", "root")


async def test_an_operator_may_allow_a_denied_name(
    control_plane_factory: Callable[[dict[str, str]], ControlPlaneProcess],
) -> None:
    cp = control_plane_factory({"CONTROLPLANE_ALLOWED_ENV": '["PATH"]'})
    server = cp.new_server()
    fake = await FakeAgent.connect(cp, server.id, server.key)
    try:
        with cp.client() as admin:
            body = {"server": server.name, "line": "id", "env": {"PATH": "/opt/bin:/usr/bin"}}
            assert admin.post(COMMANDS, json=body).status_code == 201
            body["env"] = {"LD_PRELOAD": "/tmp/x.so"}
            refused(admin.post(COMMANDS, json=body), 400, "INVALID_COMMAND")
        assert (await fake.expect(CommandRun)).env == {"PATH": "/opt/bin:/usr/bin"}
    finally:
        await fake.close()
