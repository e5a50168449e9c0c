"""The console over plain HTTP (no browser): login and logout, redirects, bulk reject,
and that the console refuses what the API refuses."""

from __future__ import annotations

import html
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.controlplane import ControlPlaneProcess, FakeAgent, Server, running_control_plane


SESSIONS = "/api/work-sessions/sessions/"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    with running_control_plane(tmp_path_factory.mktemp("console-http")) as control_plane:
        yield control_plane


@pytest.fixture
async def online(cp: ControlPlaneProcess) -> AsyncIterator[Server]:
    server = cp.new_server(f"ch-{uuid.uuid4().hex[:10]}")
    agent = await FakeAgent.connect(cp, server.id, server.key)
    try:
        yield server
    finally:
        await agent.close()


def make_user(cp: ControlPlaneProcess, *, superuser: bool = False) -> tuple[str, str]:
    name, password = f"h{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(12)
    with cp.client() as admin:
        answer = admin.post(
            "/api/iam/users/",
            json={"username": name, "password": password, "is_superuser": superuser},
        )
        assert answer.status_code == 201, answer.text
    return name, password


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text[:500]
    return match.group(1)


def console_login(
    cp: ControlPlaneProcess, name: str, password: str, **extra: str
) -> tuple[httpx.Client, str]:
    """A client logged in through the form, and where the form sent it."""
    client = httpx.Client(base_url=cp.url)
    token = csrf_of(client.get("/console/login"))
    answer = client.post(
        "/console/login",
        data={"username": name, "password": password, "csrf": token, **extra},
    )
    assert answer.status_code == 303, answer.text
    assert client.cookies["fleetgate_csrf"] != token  # a new CSRF token with the login
    return client, answer.headers["location"]


def flash(client: httpx.Client, redirect: httpx.Response) -> str:
    """The message the page after ``redirect`` shows (once)."""
    assert redirect.status_code == 303, redirect.text
    landed = client.get(redirect.headers["location"])
    match = re.search(r'<div class="flash" id="flash">([^<]*)</div>', landed.text)
    assert match, landed.text[:300]
    assert 'id="flash"' not in client.get(redirect.headers["location"]).text  # once
    return html.unescape(match.group(1))


def test_login_logout_and_redirects(cp: ControlPlaneProcess) -> None:
    name, password = make_user(cp)
    with httpx.Client(base_url=cp.url) as anonymous:
        first = anonymous.get("/console/sessions?status=active")
        assert first.status_code == 303
        assert (
            first.headers["location"] == "/console/login?next=/console/sessions%3Fstatus%3Dactive"
        )
        assert anonymous.get("/").headers["location"] == "/console/sessions"
        form = anonymous.get("/console/login")
        token = csrf_of(form)
        policy = form.headers["content-security-policy"]
        assert "script-src 'self' 'wasm-unsafe-eval';" in policy
        assert "frame-ancestors 'none'" in policy
        assert form.headers["x-frame-options"] == "DENY"
        assert form.headers["cache-control"] == "no-store"
        wrong = anonymous.post(
            "/console/login", data={"username": name, "password": "nope", "csrf": token}
        )
        assert wrong.status_code == 401
        assert "Wrong username or password." in wrong.text
        assert "fleetgate_login" not in anonymous.cookies
        no_csrf = anonymous.post("/console/login", data={"username": name, "password": password})
        assert no_csrf.status_code == 403
        assert "fleetgate_login" not in anonymous.cookies

    # ``next`` stays on this console: never an open redirect.
    for target in ("//evil.example/x", "https://evil.example/", "/api/auth/tokens/"):
        elsewhere, landed = console_login(cp, name, password, next=target)
        assert landed == "/console/sessions", target
        elsewhere.close()
    client, landed = console_login(cp, name, password, next="/console/servers")
    assert landed == "/console/servers"
    assert client.get("/console/sessions").status_code == 200
    key = client.cookies["fleetgate_login"]
    with cp.client(key) as api:  # the cookie holds the API's gated login token
        whoami = api.get("/api/auth/whoami/").json()
        assert whoami["auth_method"] == "login"
    csrf = csrf_of(client.get("/console/sessions"))
    out = client.post("/console/logout", data={"csrf": csrf})
    assert (out.status_code, out.headers["location"]) == (303, "/console/login")
    with cp.client(key) as api:  # the token itself was deleted, not just the cookie
        assert api.get("/api/auth/whoami/").status_code == 401
    assert client.get("/console/sessions").status_code == 303  # back to the login form
    client.close()


def test_bulk_reject_and_refusals_follow_the_api(cp: ControlPlaneProcess, online: Server) -> None:
    name, password = make_user(cp)
    boss, boss_password = make_user(cp, superuser=True)
    with cp.client() as admin:
        login = admin.post("/api/auth/login/", json={"username": name, "password": password})
        token = login.json()["token"]
    ids = []
    with cp.client(token) as user_api:
        for purpose in ("one", "two"):
            created = user_api.post(
                SESSIONS,
                json={"description": purpose, "servers": [online.name], "duration": "1h"},
            )
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])

    user, _ = console_login(cp, name, password)
    assert user.get("/console/approvals").status_code == 403
    csrf = csrf_of(user.get("/console/sessions"))
    tried = user.post("/console/approvals", data={"csrf": csrf, "action": "reject", "ids": ids})
    assert tried.status_code == 303
    assert "Rejected 0" in flash(user, tried)
    # Approving one's own request through the session page is refused by the API too.
    own = user.post(f"/console/sessions/{ids[0]}/act", data={"csrf": csrf, "action": "approve"})
    assert "Refused" in flash(user, own)

    superuser, _ = console_login(cp, boss, boss_password)
    csrf = csrf_of(superuser.get("/console/approvals"))
    done = superuser.post("/console/approvals", data={"csrf": csrf, "action": "reject", "ids": ids})
    assert flash(superuser, done) == "Rejected 2."
    with cp.client() as admin:
        for session_id in ids:
            assert admin.get(f"{SESSIONS}{session_id}/").json()["status"] == "rejected"
    user.close()
    superuser.close()


def test_static_assets_and_openapi_page(cp: ControlPlaneProcess) -> None:
    with httpx.Client(base_url=cp.url) as client:
        docs = client.get("/api/docs")
        assert docs.status_code == 200
        assert "/console/static/dist/swagger-ui-bundle.js" in docs.text
        assert "/api/openapi.json" in docs.text
        for asset in ("console.js", "console.css", "swagger-ui-bundle.js", "swagger-ui.css"):
            answer = client.get(f"/console/static/dist/{asset}")
            assert answer.status_code == 200, asset
            assert len(answer.content) > 1000, asset
        assert client.get("/console/static/../../app.py").status_code == 404


def test_assignee_is_for_superusers_only(cp: ControlPlaneProcess, online: Server) -> None:
    name, password = make_user(cp)
    boss, boss_password = make_user(cp, superuser=True)
    form = {"purpose": "db upgrade", "servers": online.id, "scopes": "command", "preset": "1h"}

    user, _ = console_login(cp, name, password)
    page = user.get("/console/sessions/new")
    assert 'id="assignee"' not in page.text
    refused = user.post(
        "/console/sessions/new", data={**form, "assignee": boss, "csrf": csrf_of(page)}
    )
    assert refused.status_code == 400
    assert "Only a superuser may assign" in html.unescape(refused.text)

    superuser, _ = console_login(cp, boss, boss_password)
    page = superuser.get("/console/sessions/new")
    assert 'id="assignee"' in page.text
    created = superuser.post(
        "/console/sessions/new", data={**form, "assignee": name, "csrf": csrf_of(page)}
    )
    assert created.status_code == 303, created.text
    session_id = created.headers["location"].rsplit("/", 1)[1]
    with cp.client() as admin:
        session = admin.get(f"{SESSIONS}{session_id}/").json()
    assert session["assigned_user"]["name"] == name
    assert session["created_by"]["name"] == boss
    # Assigned by a superuser: approved at once, and the assignee sees it in their list.
    assert session["status"] == "active"
    assert session_id in user.get("/console/sessions").text
    user.close()
    superuser.close()
