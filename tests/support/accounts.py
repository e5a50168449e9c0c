"""Users with passwords and their ``login`` tokens, made through the HTTP API."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from tests.support.controlplane import ControlPlaneProcess


__all__ = ["active_session", "new_login"]


def new_login(
    cp: ControlPlaneProcess, *, superuser: bool = False, server_username: str | None = None
) -> tuple[int, str, str]:
    """Create a user (unique name) and log in: ``(user id, username, login token)``.

    ``server_username`` maps a non-superuser to their account on servers (their commands,
    terminals and transfers run as it).
    """
    username = f"u{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    with cp.client() as admin:
        created = admin.post(
            "/api/iam/users/",
            json={
                "username": username,
                "password": password,
                "is_superuser": superuser,
                "server_username": server_username,
            },
        )
        assert created.status_code == 201, created.text
        login = admin.post("/api/auth/login/", json={"username": username, "password": password})
        assert login.status_code == 200, login.text
    return int(created.json()["id"]), username, str(login.json()["token"])


def active_session(
    cp: ControlPlaneProcess,
    token: str,
    *,
    server: str,
    scopes: Sequence[str],
    sudo: Sequence[str] = (),
    duration: str = "1h",
) -> dict[str, Any]:
    """A work session of a superuser's ``token`` (approved and active at once)."""
    body: dict[str, Any] = {
        "description": "test",
        "servers": [server],
        "scopes": list(scopes),
        "duration": duration,
    }
    if sudo:
        body["sudo_policies"] = [{"commands": list(sudo)}]
    with cp.client(token) as client:
        created = client.post("/api/work-sessions/sessions/", json=body)
    assert created.status_code == 201, created.text
    session: dict[str, Any] = created.json()
    assert session["status"] == "active", session
    return session
