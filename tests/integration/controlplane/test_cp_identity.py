"""Identity, tokens, users and servers endpoints against the real control plane."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support.controlplane import ControlPlaneProcess


def client(cp: ControlPlaneProcess, token: str | None = None) -> httpx.Client:
    return cp.client(token)


def test_whoami_of_the_admin_token(control_plane: ControlPlaneProcess) -> None:
    with client(control_plane) as c:
        body = c.get("/api/auth/whoami/").json()
    assert body == {
        "id": 1,
        "username": "admin",
        "email": "",
        "is_superuser": True,
        "auth_method": "token",
        "work_session_required": False,
        "gated": False,
        "server_username": None,
        "acl": None,
    }


@pytest.mark.parametrize("style", ['token="{}"', "token={}", "Bearer {}"])
def test_authorization_header_styles(control_plane: ControlPlaneProcess, style: str) -> None:
    response = httpx.get(
        f"{control_plane.url}/api/auth/whoami/",
        headers={"Authorization": style.format(control_plane.admin_token)},
        timeout=10,
    )
    assert response.status_code == 200


def test_login_tokens_and_users(control_plane: ControlPlaneProcess) -> None:
    name = f"bob-{uuid.uuid4().hex[:6]}"
    with client(control_plane) as c:
        created = c.post(
            "/api/iam/users/", json={"username": name, "email": "b@x.org", "password": "hunter22"}
        )
        assert created.status_code == 201, created.text
        assert created.json()["is_superuser"] is False
        dup = c.post("/api/iam/users/", json={"username": name})
        assert dup.status_code == 409
        assert dup.json()["code"] == "USER_ALREADY_EXISTS"
        assert name in [u["username"] for u in c.get("/api/iam/users/").json()]
    login = httpx.post(
        f"{control_plane.url}/api/auth/login/",
        json={"username": name, "password": "hunter22"},
        timeout=10,
    )
    assert login.status_code == 200, login.text
    assert login.json()["token"].startswith("flt_")
    assert login.json()["expires_at"].endswith("Z")
    with client(control_plane, login.json()["token"]) as c:
        me = c.get("/api/auth/whoami/").json()
        assert (me["username"], me["auth_method"], me["work_session_required"]) == (
            name,
            "login",
            True,
        )
        made = c.post(
            "/api/auth/tokens/",
            json={"name": "laptop", "expires_at": "2099-01-01T00:00:00Z", "command_acl": ["ls *"]},
        )
        assert made.status_code == 201, made.text
        token = made.json()
        assert token["key"].startswith("fat_")
        assert token["kind"] == "api"
        assert token["expires_at"] == "2099-01-01T00:00:00.000000Z"
        listed = c.get("/api/auth/tokens/").json()
        assert {t["name"] for t in listed} == {"login", "laptop"}
        assert all("key" not in t for t in listed)
        past = c.post("/api/auth/tokens/", json={"name": "x", "expires_at": "2000-01-01T00:00:00Z"})
        assert past.status_code == 400
        assert past.json()["code"] == "INVALID_REQUEST"
        assert c.delete(f"/api/auth/tokens/{token['id']}/").status_code == 204
        gone = c.delete(f"/api/auth/tokens/{token['id']}/")
        assert (gone.status_code, gone.json()["code"]) == (404, "TOKEN_NOT_FOUND")
    deleted = httpx.get(
        f"{control_plane.url}/api/auth/whoami/",
        headers=control_plane.auth_headers(token["key"]),
        timeout=10,
    )
    assert deleted.status_code == 401


def test_servers_register_list_detail(control_plane: ControlPlaneProcess) -> None:
    name = f"web-{uuid.uuid4().hex[:8]}"
    with client(control_plane) as c:
        response = c.post(
            "/api/servers/servers/register/", json={"name": name, "hostname": "web.local"}
        )
        assert response.status_code == 201
        body = response.json()
        assert set(body) == {"id", "name", "key", "signing_public_key", "ssh_ca_public_key"}
        dup = c.post("/api/servers/servers/register/", json={"name": name})
        assert (dup.status_code, dup.json()["code"]) == (409, "SERVER_ALREADY_REGISTERED")
        page = c.get("/api/servers/servers/", params={"name": name}).json()
        assert page["count"] == 1
        server = page["results"][0]
        assert set(server) == {
            "id",
            "name",
            "hostname",
            "agent_version",
            "is_connected",
            "registered_at",
            "connected_at",
            "last_seen_at",
            "features",
            "labels",
        }
        assert (server["id"], server["hostname"], server["is_connected"]) == (
            body["id"],
            "web.local",
            False,
        )
        assert server["features"] == []
        assert server["labels"] == {}
        assert c.get(f"/api/servers/servers/{body['id']}/").json() == server
        assert c.get(f"/api/servers/servers/{name}/").json() == server
        offline = c.get("/api/servers/servers/", params={"is_connected": "false", "page_size": 100})
        assert offline.status_code == 200
        assert c.get("/api/servers/servers/", params={"is_connected": "x"}).status_code == 400
        assert c.delete(f"/api/servers/servers/{body['id']}/").status_code == 204
        missing = c.get(f"/api/servers/servers/{name}/")
        assert (missing.status_code, missing.json()["code"]) == (404, "SERVER_NOT_FOUND")


def test_unknown_route_has_an_error_body(control_plane: ControlPlaneProcess) -> None:
    with client(control_plane) as c:
        response = c.get("/api/nothing/here/")
    assert response.status_code == 404
    assert set(response.json()) == {"code", "detail"}
