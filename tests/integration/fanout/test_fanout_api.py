"""Fan-out through the HTTP API: targets by list and by label selector, all-or-nothing
refusals naming the bad targets, the work-session gate across every server, the
aggregated status, paged results and the merged output stream (real control plane and
real agents)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.fanout.conftest import DB, WEB, Fleet
from tests.support.accounts import new_login
from tests.support.users import temporary_user


FANOUTS = "/api/events/fanouts/"


def _create(fleet: Fleet, body: dict[str, Any], token: str | None = None) -> httpx.Response:
    with fleet.cp.client(token) as client:
        return client.post(FANOUTS, json=body)


def test_labels_come_from_the_agent_config_and_superusers(fleet: Fleet) -> None:
    with fleet.cp.client() as client:
        server = client.get(f"/api/servers/servers/{DB}/").json()
        assert server["labels"] == {"role": "db"}
        patched = client.patch(
            f"/api/servers/servers/{DB}/labels/", json={"labels": {"tier": "gold", "role": "db2"}}
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["labels"] == {"role": "db2", "tier": "gold"}
        # Removing the operator's label shows the agent's again.
        removed = client.patch(
            f"/api/servers/servers/{DB}/labels/", json={"labels": {"role": None, "tier": None}}
        )
        assert removed.json()["labels"] == {"role": "db"}
        bad = client.patch(f"/api/servers/servers/{DB}/labels/", json={"labels": {"a b": "x"}})
        assert bad.status_code == 400
        assert bad.json()["code"] == "INVALID_REQUEST"
        assert "a b" in bad.json()["detail"]
        assert client.get(f"/api/servers/servers/{DB}/").json()["labels"] == {"role": "db"}
    _, _, login = new_login(fleet.cp)  # not a superuser
    with fleet.cp.client(login) as client:
        denied = client.patch(f"/api/servers/servers/{DB}/labels/", json={"labels": {"x": "y"}})
    assert denied.status_code == 403


def test_a_list_of_servers_gets_one_command_each(fleet: Fleet) -> None:
    response = _create(fleet, {"servers": [*WEB, "web-01"], "line": "echo hello-list"})
    assert response.status_code == 201, response.text
    created = response.json()
    assert isinstance(created, list)
    assert sorted(c["server_name"] for c in created) == sorted(WEB)  # a duplicate counts once
    fanout_id = created[0]["fanout"]
    assert {c["fanout"] for c in created} == {fanout_id}
    assert response.headers["x-fanout-id"] == fanout_id
    assert len({c["id"] for c in created}) == 2
    status = fleet.wait_done(fanout_id)
    assert status["counts"] == {"queued": 0, "running": 0, "succeeded": 2, "failed": 0}
    assert status["total"] == 2
    assert status["success"] is True
    with fleet.cp.client() as client:
        page1 = client.get(f"{FANOUTS}{fanout_id}/results/", params={"page_size": 1}).json()
        page2 = client.get(
            f"{FANOUTS}{fanout_id}/results/", params={"page_size": 1, "page": 2}
        ).json()
    assert page1["count"] == 2
    assert "page=2" in page1["next"]
    assert page2["next"] is None
    names = [page1["results"][0]["server_name"], page2["results"][0]["server_name"]]
    assert names == sorted(WEB)
    assert all(p["results"][0]["result"] == "hello-list\n" for p in (page1, page2))


def test_a_label_selector_targets_the_labelled_servers(fleet: Fleet) -> None:
    response = _create(fleet, {"selector": "role=web", "line": "echo sel"})
    assert response.status_code == 201, response.text
    assert sorted(c["server_name"] for c in response.json()) == sorted(WEB)
    response = _create(fleet, {"selector": "role!=web", "line": "echo sel"})
    assert [c["server_name"] for c in response.json()] == [DB]
    none = _create(fleet, {"selector": "role=cache", "line": "echo sel"})
    assert none.status_code == 404
    assert none.json()["code"] == "SERVER_NOT_FOUND"
    assert "role=cache" in none.json()["detail"]
    bad = _create(fleet, {"selector": "role=,=x", "line": "echo sel"})
    assert bad.status_code == 400
    assert bad.json()["source"] == "selector"


def test_refusals_are_all_or_nothing_and_name_the_bad_targets(fleet: Fleet) -> None:
    before = fleet.command_count()
    unknown = _create(fleet, {"servers": ["web-01", "nope-1", "nope-2"], "line": "true"})
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "SERVER_NOT_FOUND"
    assert "'nope-1'" in unknown.json()["detail"]
    assert "'nope-2'" in unknown.json()["detail"]
    assert "web-01" not in unknown.json()["detail"]
    offline_name = f"off-{uuid.uuid4().hex[:6]}"
    fleet.cp.register_server(offline_name)  # registered, no agent
    offline = _create(fleet, {"servers": ["web-01", offline_name], "line": "true"})
    assert offline.status_code == 503
    assert offline.json()["code"] == "SERVER_NOT_CONNECTED"
    assert offline_name in offline.json()["detail"]
    assert "web-01" not in offline.json()["detail"]
    both = _create(fleet, {"servers": ["web-01"], "selector": "role=web", "line": "true"})
    assert both.status_code == 400
    empty_line = _create(fleet, {"servers": ["web-01"], "line": "  "})
    assert empty_line.status_code == 400
    assert empty_line.json()["code"] == "INVALID_COMMAND"
    scheduled = _create(
        fleet, {"servers": ["web-01"], "line": "true", "scheduled_at": "2030-01-01T00:00:00Z"}
    )
    assert scheduled.status_code == 400, scheduled.text
    assert "scheduled_at" in scheduled.json()["detail"]
    long_name = _create(fleet, {"servers": ["x" * 300], "line": "true"})
    assert long_name.status_code == 400, long_name.text
    assert fleet.command_count() == before  # nothing was created


def _session(fleet: Fleet, token: str, servers: list[str]) -> str:
    body = {"description": "fan-out", "servers": servers, "scopes": ["command"], "duration": "1h"}
    with fleet.cp.client(token) as client:
        created = client.post("/api/work-sessions/sessions/", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "active"
    return str(created.json()["id"])


def test_the_gate_covers_every_targeted_server(fleet: Fleet) -> None:
    _, _, login = new_login(fleet.cp, superuser=True)
    before = fleet.command_count()
    body = {"servers": list(WEB), "line": "echo gated"}
    required = _create(fleet, body, login)
    assert required.status_code == 403
    assert required.json()["code"] == "work_session_required"
    narrow = _session(fleet, login, ["web-01"])
    denied = _create(fleet, {**body, "work_session": narrow}, login)
    assert denied.status_code == 403, denied.text
    assert denied.json()["code"] == "work_session_server_not_allowed"
    assert "web-02" in denied.json()["detail"]
    assert "1 of 2" in denied.json()["detail"]
    assert fleet.command_count() == before
    wide = _session(fleet, login, list(WEB))
    allowed = _create(fleet, {**body, "work_session": wide}, login)
    assert allowed.status_code == 201, allowed.text
    fanout_id = allowed.json()[0]["fanout"]
    status = fleet.wait_done(fanout_id)
    assert status["counts"]["succeeded"] == 2
    # Each server's command carries its own grant, checked by its agent: both ran.
    with fleet.cp.client(login) as client:
        results = client.get(
            f"{FANOUTS}{fanout_id}/results/", headers={"X-Work-Session": wide}
        ).json()["results"]
        assert [r["result"] for r in results] == ["gated\n", "gated\n"]
        # Reading the output needs a session covering every server, like `exec logs`.
        refused = client.get(f"{FANOUTS}{fanout_id}/results/", headers={"X-Work-Session": narrow})
        assert refused.status_code == 403
        timeline = client.get(f"/api/work-sessions/sessions/{wide}/timeline/").json()
    items = timeline if isinstance(timeline, list) else timeline.get("results", [])
    ran = {i.get("command_id") for i in items if i.get("type") == "command"}
    assert {r["id"] for r in results} <= ran


def test_status_counts_and_the_merged_stream(fleet: Fleet, tmp_path: Path) -> None:
    # mkdir is atomic: exactly one server creates the directory and succeeds.
    marker = tmp_path / "first"
    line = f"mkdir {marker} 2>/dev/null && echo won || {{ echo lost; exit 3; }}"
    response = _create(fleet, {"servers": list(WEB), "line": line})
    assert response.status_code == 201, response.text
    fanout_id = response.json()[0]["fanout"]
    with (
        fleet.cp.client(timeout=30) as client,
        client.stream("GET", f"{FANOUTS}{fanout_id}/stream/") as stream,
    ):
        events = [json.loads(line) for line in stream.iter_lines() if line]
    assert events[-1]["event"] == "done"
    status = events[-1]["fanout"]
    assert status["counts"] == {"queued": 0, "running": 0, "succeeded": 1, "failed": 1}
    assert status["success"] is False
    finished = {e["server_name"]: e["command"] for e in events if e["event"] == "finished"}
    assert sorted(finished) == sorted(WEB)
    assert sorted(c["exit_code"] for c in finished.values()) == [0, 3]
    output = {e["server_name"]: e["content"] for e in events if e["event"] == "output"}
    assert sorted(output.values()) == ["lost\n", "won\n"]
    with fleet.cp.client() as client:
        failed = client.get(f"{FANOUTS}{fanout_id}/results/", params={"state": "failed"}).json()
    assert failed["count"] == 1
    assert failed["results"][0]["exit_code"] == 3
    assert fleet.fanout(fanout_id)["counts"] == status["counts"]


def test_unknown_fanout_is_404(fleet: Fleet) -> None:
    with fleet.cp.client() as client:
        for path in ("", "results/", "stream/"):
            response = client.get(f"{FANOUTS}{uuid.uuid4()}/{path}")
            assert response.status_code == 404
            assert response.json()["code"] == "FANOUT_NOT_FOUND"


@pytest.mark.root
def test_a_users_fanout_runs_as_their_own_account_and_never_as_root(fleet: Fleet) -> None:
    """A fan-out is authorized like one command on each server: a non-superuser's runs as
    their mapped account, and naming root or a loader variable is refused before any
    server is touched."""
    with temporary_user() as account:
        _, _, login = new_login(fleet.cp, server_username=account.name)
        body = {"description": "fan-out", "servers": list(WEB), "scopes": ["command"]}
        with fleet.cp.client(login) as client:
            created = client.post(
                "/api/work-sessions/sessions/", json={**body, "duration": "1h"}
            ).json()
        with fleet.cp.client() as admin:
            approved = admin.post(f"/api/work-sessions/sessions/{created['id']}/approve/")
            assert approved.json()["status"] == "active", approved.text
        before = fleet.command_count()
        as_root = _create(
            fleet,
            {
                "servers": list(WEB),
                "line": "id -un",
                "username": "root",
                "work_session": created["id"],
            },
            login,
        )
        assert as_root.status_code == 403, as_root.text
        assert as_root.json()["code"] == "IDENTITY_NOT_ALLOWED"
        loader = _create(
            fleet,
            {
                "servers": list(WEB),
                "line": "id -un",
                "env": {"LD_PRELOAD": "/tmp/x.so"},
                "work_session": created["id"],
            },
            login,
        )
        assert loader.status_code == 400, loader.text
        assert "LD_PRELOAD" in loader.json()["detail"]
        assert fleet.command_count() == before
        mine = _create(
            fleet, {"servers": list(WEB), "line": "id -un", "work_session": created["id"]}, login
        )
        assert mine.status_code == 201, mine.text
        assert {c["username"] for c in mine.json()} == {account.name}
        fanout_id = mine.json()[0]["fanout"]
        fleet.wait_done(fanout_id)
        with fleet.cp.client(login) as client:
            results = client.get(
                f"{FANOUTS}{fanout_id}/results/", headers={"X-Work-Session": created["id"]}
            ).json()["results"]
        assert [r["result"] for r in results] == [f"{account.name}\n"] * len(WEB)
