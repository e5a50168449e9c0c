"""``PATCH /api/iam/users/<id>/``: disabling a user, and the refusals around it."""

from __future__ import annotations

import subprocess
import sys

from tests.support.accounts import new_login
from tests.support.controlplane import REPO_ROOT, ControlPlaneProcess


def test_disable_refusals_lose_nothing(control_plane: ControlPlaneProcess) -> None:
    cp = control_plane
    user_id, _, token = new_login(cp)
    with cp.client() as admin:
        me = admin.get("/api/auth/whoami/").json()["id"]
        self_off = admin.patch(f"/api/iam/users/{me}/", json={"is_active": False})
        assert self_off.status_code == 400, self_off.text
        assert self_off.json()["code"] == "INVALID_REQUEST"
        unknown = admin.patch("/api/iam/users/999999/", json={"is_active": False})
        assert unknown.status_code == 404
        assert unknown.json()["code"] == "USER_NOT_FOUND"
        wrong_type = admin.patch(f"/api/iam/users/{user_id}/", json={"is_active": "nope"})
        assert wrong_type.status_code == 400, wrong_type.text
        extra = admin.patch(f"/api/iam/users/{user_id}/", json={"is_superuser": True})
        assert extra.status_code == 400, extra.text
    with cp.client(token) as user:
        forbidden = user.patch(f"/api/iam/users/{user_id}/", json={"is_active": False})
        assert forbidden.status_code == 403
        # Nothing above changed the user: still active, still signed in.
        assert user.get("/api/auth/whoami/").status_code == 200


def test_a_disabled_user_cannot_log_in(control_plane: ControlPlaneProcess) -> None:
    cp = control_plane
    with cp.client() as admin:
        made = admin.post("/api/iam/users/", json={"username": "dora", "password": "pw-dora-1"})
        assert made.status_code == 201, made.text
        assert made.json()["is_active"] is True
        off = admin.patch(f"/api/iam/users/{made.json()['id']}/", json={"is_active": False})
        assert off.status_code == 200, off.text
        login = admin.post("/api/auth/login/", json={"username": "dora", "password": "pw-dora-1"})
        assert login.status_code == 401
        assert login.json()["code"] == "AUTHENTICATION_FAILED"


def test_cli_disables_and_enables_a_user(control_plane: ControlPlaneProcess) -> None:
    cp = control_plane
    _, username, token = new_login(cp)  # the token is not cached yet: never used

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "fleetgate.controlplane",
                "user",
                *args,
                "--database-url",
                cp.database_url,
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    disabled = run("disable", username)
    assert disabled.returncode == 0, disabled.stderr
    assert f"disabled user {username}" in disabled.stdout
    with cp.client(token) as user:
        assert user.get("/api/auth/whoami/").status_code == 401
    enabled = run("enable", username)
    assert enabled.returncode == 0, enabled.stderr
    with cp.client(token) as user:
        assert user.get("/api/auth/whoami/").status_code == 200
    unknown = run("disable", "no-such-user")
    assert unknown.returncode == 1
    assert "no user 'no-such-user'" in unknown.stderr
