"""Every route of the app has an authorization rule, and every rule holds (issue 14).

The app's routes (HTTP and websocket) are enumerated from ``create_app()``; each must have
a rule in ``fleetgate.controlplane.authz.RULES`` (and every rule a route), so a new route
without a rule fails here. Then, against a real control plane, every route is called by
each principal its rule refuses: nobody (anonymous), a gated non-superuser without a work
session (who owns a command, a terminal and a tunnel made in a session that was revoked
since), and a superuser-issued token whose ACL allows only ``uptime``; each must get the
refusal, with its code, before the route does anything.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fleetgate.controlplane.app import create_app
from fleetgate.controlplane.authz import RULES, Access, Rule, iter_routes
from tests.support.accounts import new_login
from tests.support.controlplane import ControlPlaneProcess, FakeAgent, Server


def test_every_route_has_a_rule_and_every_rule_a_route() -> None:
    routes = set(iter_routes(create_app().routes))
    assert routes, "no routes found: iter_routes does not understand this FastAPI"
    missing = sorted(routes - set(RULES))
    assert not missing, f"routes without an authorization rule in authz.RULES: {missing}"
    stale = sorted(set(RULES) - routes)
    assert not stale, f"rules for routes that do not exist: {stale}"
    # The refusal test below covers every kind of rule.
    assert {rule.access for rule in RULES.values()} == set(Access)


@dataclass(frozen=True)
class Who:
    """A principal the test calls routes as."""

    name: str
    token: str | None


@dataclass(frozen=True)
class World:
    """The principals and a connected server."""

    server: Server
    anonymous: Who
    gated: Who
    acl: Who
    owned: dict[str, str]
    """Path parameter -> an object of the gated principal (its session is over)."""


@pytest.fixture
async def world(control_plane: ControlPlaneProcess, server: Server) -> AsyncIterator[World]:
    agent = await FakeAgent.connect(control_plane, server.id, server.key, features=["tunnel"])
    _uid, name, login = new_login(control_plane, server_username="frank")
    with control_plane.client() as admin:
        made = admin.post("/api/auth/tokens/", json={"name": "acl", "command_acl": ["uptime"]})
        assert made.status_code == 201, made.text
        session = admin.post(
            "/api/work-sessions/sessions/",
            json={
                "description": "route table",
                "servers": [server.name],
                "scopes": ["command", "websh", "tunnel"],
                "assigned_user": name,
                "duration": "1h",
            },
        ).json()
    owned = _owned(control_plane, login, server, session["id"])
    with control_plane.client() as admin:
        revoked = admin.post(f"/api/work-sessions/sessions/{session['id']}/revoke/")
        assert revoked.json()["status"] == "revoked", revoked.text
    try:
        yield World(
            server,
            Who("anonymous", None),
            Who("gated non-superuser without a session", login),
            Who("token whose ACL allows only uptime", made.json()["key"]),
            owned,
        )
    finally:
        await agent.close()


def _owned(cp: ControlPlaneProcess, login: str, server: Server, session: str) -> dict[str, str]:
    """A command, a terminal, a tunnel and a fan-out of the gated principal, made in
    ``session``."""
    made: dict[str, str] = {}
    with cp.client(login) as user:
        for param, path, body in (
            ("command_id", "/api/events/commands/", {"line": "uptime"}),
            ("terminal_id", "/api/websh/terminals/", {}),
            ("tunnel_id", "/api/tunnels/", {"remote_port": 5432}),
        ):
            response = user.post(
                path, json={"server": server.name, "work_session": session, **body}
            )
            assert response.status_code == 201, response.text
            made[param] = response.json()["id"]
        fanout = user.post(
            "/api/events/fanouts/",
            json={"servers": [server.name], "line": "uptime", "work_session": session},
        )
        assert fanout.status_code == 201, fanout.text
        made["fanout_id"] = fanout.headers["x-fanout-id"]
    return made


def _expected(rule: Rule, who: str, world: World) -> set[tuple[int, str]] | None:
    """The refusals ``who`` may get from a route with ``rule`` (``None``: not refused).

    The gated principal's objects belong to a revoked session: the gate refuses them with
    a ``work_session_*`` code (an ended session's terminal is closed: 409).
    """
    if rule.access is Access.ANONYMOUS:
        return None
    if rule.access is Access.CONSOLE:
        # Pages know only the login cookie: a header is nobody. GET pages send the
        # browser to the login page; anything else is 401.
        return {(303, ""), (401, "AUTHENTICATION_FAILED")}
    if who == "anonymous":
        return {(401, "AUTHENTICATION_FAILED"), (403, "")}  # agent routes: refused handshake
    if rule.access in (Access.AGENT, Access.REPLICA):
        return {(401, "AUTHENTICATION_FAILED"), (403, "PERMISSION_DENIED"), (403, "")}
    if who == world.gated.name:
        if rule.access is Access.SUPERUSER:
            return {(403, "PERMISSION_DENIED")}
        if rule.gated:
            return {(403, "work_session_*"), (409, "TERMINAL_CLOSED")}
        return None
    if rule.acl_ok or rule.operation == "command":
        return None
    if rule.operation is None:  # administration, tokens, work sessions
        return {(403, "PERMISSION_DENIED")}
    return {(403, "API_TOKEN_ACL_NOT_ALLOWED")}


def _concrete(path: str, owned: dict[str, str] | None = None) -> str:
    """``path`` with its parameters filled: the principal's objects, else random ids."""
    ids = owned or {}
    return re.sub(r"\{([a-z_]+)\}", lambda m: ids.get(m.group(1), str(uuid.uuid4())), path)


def _ssh_public_key() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def _body(path: str, world: World) -> dict[str, Any]:
    """A valid body, so that only authorization can refuse."""
    name = world.server.name
    bodies: dict[str, dict[str, Any]] = {
        "/api/events/commands/": {"server": name, "line": "uptime"},
        "/api/events/fanouts/": {"servers": [name], "line": "uptime"},
        "/api/websh/terminals/": {"server": name},
        "/api/tunnels/": {"server": name, "remote_port": 5432},
        "/api/servers/servers/register/": {"name": f"x-{uuid.uuid4().hex[:8]}"},
        "/api/iam/users/": {"username": f"x{uuid.uuid4().hex[:8]}"},
        "/api/auth/tokens/": {"name": "x"},
        "/api/ssh/certificates/": {"server": name, "public_key": _ssh_public_key()},
    }
    return bodies.get(path, {})


async def _call_http(
    cp: ControlPlaneProcess, method: str, path: str, who: Who, world: World
) -> tuple[int, str]:
    headers = {} if who.token is None else cp.auth_headers(who.token)
    async with httpx.AsyncClient(base_url=cp.url, timeout=10) as client:
        response = await client.request(
            method,
            _concrete(path, world.owned if who is world.gated else None),
            headers=headers,
            json=_body(path, world) if method in {"POST", "PATCH"} else None,
        )
    try:
        code = str(response.json().get("code", ""))
    except (ValueError, AttributeError):
        code = ""
    return response.status_code, code


async def _call_ws(cp: ControlPlaneProcess, path: str, who: Who, world: World) -> tuple[int, str]:
    headers = {} if who.token is None else cp.auth_headers(who.token)
    query = ""
    if path == "/ws/files/":
        query = f"?server={world.server.name}&op=download&path=/etc/hostname"
    if path == "/ws/ssh/{server}/":
        path, query = f"/ws/ssh/{world.server.name}/", "?user=frank"
    owned = world.owned if who is world.gated else None
    url = f"ws://127.0.0.1:{cp.port}{_concrete(path, owned)}{query}"
    try:
        async with ws_connect(url, additional_headers=headers, open_timeout=10) as ws:
            # Accepted: an agent route must then close at once without serving.
            await ws.recv()
    except InvalidStatus as exc:
        body = json.loads(exc.response.body or b"{}")
        return exc.response.status_code, str(body.get("code", ""))
    except ConnectionClosed as exc:
        return 403, "" if exc.rcvd is None else f"close {exc.rcvd.code}"
    return 200, ""


@pytest.mark.parametrize(
    ("method", "path"), sorted(k for k, r in RULES.items() if r.access is not Access.ANONYMOUS)
)
async def test_every_route_refuses_the_principals_it_must(
    control_plane: ControlPlaneProcess, world: World, method: str, path: str
) -> None:
    rule = RULES[(method, path)]
    for who in (world.anonymous, world.gated, world.acl):
        allowed = _expected(rule, who.name, world)
        if allowed is None:
            continue
        if method == "WS":
            got = await _call_ws(control_plane, path, who, world)
        else:
            got = await _call_http(control_plane, method, path, who, world)
        ok = got in allowed or (got[0], "") in allowed
        ok = ok or (got[1].startswith("work_session_") and (got[0], "work_session_*") in allowed)
        if got[1].startswith("close ") and (403, "") in allowed:
            ok = True
        assert ok, f"{method} {path} as {who.name}: got {got}, expected one of {allowed}"
