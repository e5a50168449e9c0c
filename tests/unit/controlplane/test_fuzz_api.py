"""Structured fuzz of the HTTP API bodies through the real application, in-process.

Bodies of the command create, work session create and token create routes are drawn
from their models' JSON schemas, mutated field by field (wrong types, huge values, deep
nesting, unknown fields) and sometimes damaged as text (``tests.support.fuzz``). Every
answer is a clear error or a success, never a 5xx (but the documented 503 of an
offline server), always ``{code, detail}`` JSON on error; the client's connection
keeps serving requests afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings

from fleetgate.controlplane.api.command_checks import CommandCreateBody
from fleetgate.controlplane.api.identity import TokenCreateBody
from fleetgate.controlplane.api.worksession_bodies import CreateBody as WorkSessionCreateBody
from fleetgate.controlplane.app import create_app
from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.controlplane.store import users as users_store
from fleetgate.controlplane.store.db import connect, transaction
from fleetgate.controlplane.timeutil import now_us
from tests.support.fuzz import count, frames


FUZZ = settings(
    deadline=None,
    database=None,
    max_examples=250,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
SERVER = "fuzz-01"


class Client:
    """A synchronous client of the application, served in-process (ASGI, no socket) on
    an event loop in a thread, with the application's lifespan around it."""

    def __init__(self, portal: BlockingPortal, client: httpx.AsyncClient) -> None:
        self.portal = portal
        self.client = client

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.portal.call(lambda: self.client.post(path, **kwargs))

    def get(self, path: str) -> httpx.Response:
        return self.portal.call(self.client.get, path)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    db = Path(tmp_path_factory.mktemp("fuzz-api")) / "cp.db"
    conn = connect(db)
    try:
        with transaction(conn):
            admin = users_store.create_user(
                conn, "admin", email="", password_hash=None, is_superuser=True, now=now_us()
            )
            assert admin is not None
            _, key = users_store.create_token(
                conn, kind="api", name="fuzz", user_id=admin.id, command_acl=None, now=now_us()
            )
    finally:
        conn.close()
    app = create_app(ControlPlaneSettings(db_path=db))
    headers = {"Authorization": f'token="{key}"'}
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
    ):
        transport = httpx.ASGITransport(app=app)
        http = httpx.AsyncClient(transport=transport, base_url="http://fuzz", headers=headers)
        test_client = Client(portal, http)
        registered = test_client.post("/api/servers/servers/register/", json={"name": SERVER})
        assert registered.status_code == 201, registered.text
        yield test_client
        # The client and the application still serve normal requests after the fuzz.
        assert test_client.get("/api/auth/whoami/").status_code == 200
        portal.call(http.aclose)


def _post(client: Client, path: str, body: str | bytes, name: str) -> None:
    count(name)
    answer = client.post(path, content=body, headers={"Content-Type": "application/json"})
    if answer.status_code >= 500:  # only the documented "server offline" answer
        assert answer.status_code == 503, answer.text[:300]
        assert answer.json()["code"] == "SERVER_NOT_CONNECTED", answer.text[:300]
    if answer.status_code >= 400:
        error: Any = answer.json()
        assert isinstance(error, dict), error
        assert isinstance(error.get("code"), str), error
        assert isinstance(error.get("detail"), str), error
        assert error["detail"], error


def _command(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "server": SERVER, "scheduled_at": "2100-01-01T00:00:00Z"}


def _work_session(body: dict[str, Any]) -> dict[str, Any]:
    fields = {k: v for k, v in body.items() if k not in ("starts_at", "expires_at")}
    fields.update(servers=[SERVER], scopes=["command"], duration="1h", assigned_user=None)
    return fields


@FUZZ
@given(frames(CommandCreateBody.model_json_schema(), realistic=_command))
def test_fuzz_command_create_bodies(client: Client, batch: list[str | bytes]) -> None:
    for frame in batch:
        _post(client, "/api/events/commands/", frame, "HTTP, commands")


@FUZZ
@given(frames(WorkSessionCreateBody.model_json_schema(), realistic=_work_session))
def test_fuzz_work_session_create_bodies(client: Client, batch: list[str | bytes]) -> None:
    for frame in batch:
        _post(client, "/api/work-sessions/sessions/", frame, "HTTP, work sessions")


@FUZZ
@given(frames(TokenCreateBody.model_json_schema()))
def test_fuzz_token_create_bodies(client: Client, batch: list[str | bytes]) -> None:
    for frame in batch:
        _post(client, "/api/auth/tokens/", frame, "HTTP, tokens")
