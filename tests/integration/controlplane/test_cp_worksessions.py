"""The work-session API against a real control plane subprocess: every lifecycle
transition over HTTP, illegal ones as 409, validation, visibility, expiry, the gate."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from fleetgate.agent.policy import load_public_key, verify_grant
from fleetgate.controlplane.store import connect
from fleetgate.controlplane.store.tables import work_sessions
from fleetgate.shared.protocol import CommandRun, content_digest
from tests.support.accounts import new_login
from tests.support.controlplane import ControlPlaneProcess, FakeAgent, Server
from tests.support.waiting import eventually


SESSIONS = "/api/work-sessions/sessions/"


@pytest.fixture
async def online(control_plane: ControlPlaneProcess, server: Server) -> AsyncIterator[Server]:
    """``server`` with a fake agent connected (sessions only take connected servers)."""
    agent = await FakeAgent.connect(control_plane, server.id, server.key)
    try:
        yield server
    finally:
        await agent.close()


def _iso(delta: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta)).isoformat()


def create(
    client: httpx.Client, server: Server, expect: int = 201, **fields: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"description": "nginx fix", "servers": [server.name], "duration": "1h"}
    body.update(fields)
    response = client.post(SESSIONS, json=body)
    assert response.status_code == expect, response.text
    out: dict[str, Any] = response.json()
    return out


def act(
    client: httpx.Client, session: dict[str, Any], action: str, expect: int = 200, **body: Any
) -> dict[str, Any]:
    response = client.post(f"{SESSIONS}{session['id']}/{action}/", json=body)
    assert response.status_code == expect, response.text
    out: dict[str, Any] = response.json()
    return out


def timeline(client: httpx.Client, session: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.get(f"{SESSIONS}{session['id']}/timeline/", params={"page_size": 100})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def transitions(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(i["action"], i["to"]) for i in items if i["type"] == "status_change"]


async def test_a_superusers_own_request_is_active_at_once(
    control_plane: ControlPlaneProcess, online: Server
) -> None:
    with control_plane.client() as admin:
        session = create(admin, online, scopes=["command"])
        assert session["status"] == "active"
        assert session["started_at"] is not None
        assert session["scopes"] == ["command"]
        assert session["servers"][0]["name"] == online.name
        assert session["assigned_user"]["name"] == "admin"
        assert transitions(timeline(admin, session)) == [
            ("approve", "approved"),
            ("start", "active"),
        ]


async def test_pending_approved_active_completed(
    control_plane: ControlPlaneProcess, online: Server
) -> None:
    _, _, token = new_login(control_plane)
    with control_plane.client(token) as user, control_plane.client() as admin:
        session = create(user, online, starts_at=_iso(600), duration="1h")
        assert session["status"] == "pending"
        assert session["scopes"] == ["websh", "command", "webftp", "sudo"]  # the default set
        act(user, session, "approve", 403)
        approved = act(admin, session, "approve")
        assert approved["status"] == "approved"  # its start time is in 10 minutes
        active = act(user, session, "activate")
        assert active["status"] == "active"
        done = act(user, session, "complete")
        assert done["status"] == "completed"
        assert done["completed_at"] is not None
        items = timeline(user, session)
        assert items[0]["type"] == "created"
        assert transitions(items) == [
            ("approve", "approved"),
            ("activate", "active"),
            ("complete", "completed"),
        ]


async def test_approving_a_session_that_starts_now_makes_it_active(
    control_plane: ControlPlaneProcess, online: Server
) -> None:
    _, _, token = new_login(control_plane)
    with control_plane.client(token) as user, control_plane.client() as admin:
        session = create(user, online)
        assert act(admin, session, "approve")["status"] == "active"


@pytest.mark.parametrize(
    ("setup", "action", "who", "final"),
    [
        ([], "reject", "admin", "rejected"),
        ([], "cancel", "user", "cancelled"),
        (["approve"], "revoke", "admin", "revoked"),
        (["approve", "activate"], "revoke", "admin", "revoked"),
    ],
)
async def test_other_endings(
    control_plane: ControlPlaneProcess,
    online: Server,
    setup: list[str],
    action: str,
    who: str,
    final: str,
) -> None:
    _, _, token = new_login(control_plane)
    with control_plane.client(token) as user, control_plane.client() as admin:
        session = create(user, online, starts_at=_iso(600))
        for step in setup:
            act(admin, session, step)
        if who == "admin":
            act(user, session, action, 403)
        ended = act(admin if who == "admin" else user, session, action)
        assert ended["status"] == final


@pytest.mark.parametrize(
    ("setup", "action"),
    [
        ([], "activate"),
        ([], "complete"),
        ([], "revoke"),
        ([], "extend"),
        (["approve"], "approve"),
        (["approve"], "cancel"),
        (["approve"], "complete"),
        (["approve", "activate"], "cancel"),
        (["approve", "activate"], "reject"),
        (["approve", "activate"], "activate"),
        (["reject"], "approve"),
        (["cancel"], "activate"),
        (["approve", "activate", "complete"], "complete"),
        (["approve", "activate", "complete"], "extend"),
        (["approve", "revoke"], "activate"),
    ],
)
async def test_illegal_transitions_are_409_with_the_current_state(
    control_plane: ControlPlaneProcess, online: Server, setup: list[str], action: str
) -> None:
    with control_plane.client() as admin:
        _, _, token = new_login(control_plane)
        with control_plane.client(token) as user:
            session = create(user, online, starts_at=_iso(600))
        for step in setup:
            session = act(admin, session, step)
        body = {"duration": "1h"} if action == "extend" else {}
        refused = admin.post(f"{SESSIONS}{session['id']}/{action}/", json=body)
        assert refused.status_code == 409, refused.text
        error = refused.json()
        assert error["code"] == "WORK_SESSION_INVALID_TRANSITION"
        assert error["source"] == session["status"]
        assert f"current state: {session['status']}" in error["detail"]


async def test_extend_within_the_maximum(
    control_plane: ControlPlaneProcess, online: Server
) -> None:
    with control_plane.client() as admin:
        session = create(admin, online, duration="1h")
        longer = act(admin, session, "extend", duration="1h")
        assert longer["expires_at"] > session["expires_at"]
        act(admin, session, "extend", 400, duration="3h")  # 5 h from now > 4 h
        act(admin, session, "extend", 400, expires_at=_iso(60))  # earlier than now's end
        assert [i["type"] for i in timeline(admin, session)][-1] == "extend"


async def test_update_replaces_the_sudo_patterns(
    control_plane: ControlPlaneProcess, online: Server
) -> None:
    with control_plane.client() as admin:
        session = create(
            admin,
            online,
            sudo_policies=[{"commands": ["systemctl restart nginx"]}],
            scopes=["command"],
        )
        assert session["scopes"] == ["command", "sudo"]  # sudo patterns imply the scope
        kept = session["sudo_policies"][0]
        response = admin.patch(
            f"{SESSIONS}{session['id']}/",
            json={"sudo_policies": [kept, {"commands": ["journalctl -u nginx *"]}]},
        )
        assert response.status_code == 200, response.text
        policies = response.json()["sudo_policies"]
        assert [p["commands"] for p in policies] == [
            ["systemctl restart nginx"],
            ["journalctl -u nginx *"],
        ]
        assert policies[0]["id"] == kept["id"]
        no_sudo = create(admin, online, scopes=["command"])
        refused = admin.patch(
            f"{SESSIONS}{no_sudo['id']}/", json={"sudo_policies": [{"commands": ["ls"]}]}
        )
        assert refused.status_code == 400


@pytest.mark.parametrize(
    ("fields", "source"),
    [
        ({"description": ""}, "description"),
        ({"description": "x" * 2049}, "description"),
        ({"servers": []}, "servers"),
        ({"servers": ["no-such-server"]}, "servers"),
        ({"scopes": ["shell"]}, "scopes"),
        ({"scopes": []}, "scopes"),
        ({"duration": "5h"}, "expires_at"),
        ({"duration": "soon"}, "duration"),
        ({"duration": None, "expires_at": _iso(-10)}, "expires_at"),
        ({"duration": None}, "expires_at"),
    ],
)
async def test_create_validation(
    control_plane: ControlPlaneProcess, online: Server, fields: dict[str, Any], source: str
) -> None:
    with control_plane.client() as admin:
        error = create(admin, online, 400, **fields)
        assert error["code"] == "INVALID_REQUEST"
        assert error["source"] == source


async def test_offline_servers_cannot_be_added(
    control_plane: ControlPlaneProcess, server: Server
) -> None:
    with control_plane.client() as admin:
        error = create(admin, server, 400)
        assert "not connected" in error["detail"]


async def test_assignment_and_visibility(
    control_plane: ControlPlaneProcess, online: Server
) -> None:
    uid, username, token = new_login(control_plane)
    _, _, other_token = new_login(control_plane)
    with control_plane.client() as admin, control_plane.client(token) as user:
        assigned = create(admin, online, assigned_user=username)
        assert assigned["assigned_user"]["id"] == uid
        assert assigned["status"] == "active"  # approved by the superuser who requested it
        own = create(user, online)
        create(user, online, 403, assigned_user="admin")
        ids = {s["id"] for s in user.get(SESSIONS, params={"status": "all"}).json()["results"]}
        assert {assigned["id"], own["id"]} <= ids
        with control_plane.client(other_token) as other:
            assert other.get(f"{SESSIONS}{own['id']}/").status_code == 404
            assert other.post(f"{SESSIONS}{own['id']}/cancel/").status_code == 404
            listed = other.get(SESSIONS, params={"status": "all"}).json()
            assert listed["count"] == 0
        active = admin.get(SESSIONS, params={"status": "pending"}).json()["results"]
        assert own["id"] in {s["id"] for s in active}


async def test_a_session_expires_at_its_end(
    control_plane: ControlPlaneProcess, online: Server
) -> None:
    with control_plane.client() as admin:
        session = create(admin, online, duration="1s")
        ends = datetime.fromisoformat(session["expires_at"])
        # Not a fixed sleep: until the moment the session says it ends.
        await asyncio.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 0.05)

        # The control plane's clock task persists the expiry without anybody reading it
        # (an API read would settle it by itself): look at the stored row, read-only.
        def stored_status() -> str:
            with contextlib.closing(connect(control_plane.database_url)) as db:
                ws = work_sessions.c
                status = db.execute(select(ws.status).where(ws.id == session["id"])).scalar_one()
            return str(status)

        await eventually(lambda: stored_status() == "expired", 10, "the clock task's expiry")
        expired = admin.get(f"{SESSIONS}{session['id']}/").json()
        assert expired["status"] == "expired"
        last = timeline(admin, session)[-1]
        assert (last["action"], last["to"]) == ("expire", "expired")
        assert last["timestamp"] == session["expires_at"]
        act(admin, session, "extend", 409, duration="1h")


async def test_commands_carry_grants_signed_by_the_control_plane(
    control_plane: ControlPlaneProcess, server: Server
) -> None:
    mode = os.stat(f"{control_plane.db_path}.signing-key").st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert "PRIVATE KEY" not in control_plane.log_tail(1_000_000)
    assert control_plane.signing_public_key is not None
    key = load_public_key(control_plane.signing_public_key)
    agent = await FakeAgent.connect(control_plane, server.id, server.key)
    try:
        _, _, token = new_login(control_plane, superuser=True)
        with control_plane.client() as admin, control_plane.client(token) as su:
            created = admin.post(
                "/api/events/commands/", json={"server": server.name, "line": "true"}
            )
            assert created.status_code == 201, created.text
            run = await agent.expect(CommandRun)
            token_claims = verify_grant(
                run.grant,
                key=key,
                command_id=run.command_id,
                server_id=uuid.UUID(server.id),
                scope="command",
                now=time.time(),
                skew=0,
                content=content_digest(run),
            )
            assert (token_claims.auth, token_claims.expires_at) == ("token", None)
            session = create(su, server, scopes=["command"], duration="1h")
            gated = su.post(
                "/api/events/commands/",
                json={"server": server.name, "line": "true"},
                headers={"X-Work-Session": session["id"]},
            )
            assert gated.status_code == 201, gated.text
            run = await agent.expect(CommandRun)
            assert str(run.command_id) == gated.json()["id"]
            session_claims = verify_grant(
                run.grant,
                key=key,
                command_id=run.command_id,
                server_id=uuid.UUID(server.id),
                scope="command",
                now=time.time(),
                skew=0,
                content=content_digest(run),
            )
            assert session_claims.auth == "work_session"
            assert session_claims.work_session == session["id"]
            assert session_claims.scopes == ["command"]
            ends = datetime.fromisoformat(session["expires_at"]).timestamp()
            assert session_claims.expires_at is not None
            assert 0 <= session_claims.expires_at - ends < 1
    finally:
        await agent.close()
