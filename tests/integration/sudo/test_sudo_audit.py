"""Every elevation decision made through the API names who asked, under which work
session and, for a refusal, why: in the agent's audit log and on the session's timeline.
Real control plane and agent; no sudo plugin needed (the agent checks API elevation
itself)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.accounts import active_session, new_login
from tests.support.agent import AgentProcess, running_agent
from tests.support.controlplane import ControlPlaneProcess, running_control_plane


pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]

COMMANDS = "/api/events/commands/"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ControlPlaneProcess, AgentProcess]]:
    root: Path = tmp_path_factory.mktemp("sudo-audit")
    with running_control_plane(root / "cp") as cp, running_agent(cp, root / "agent") as agent:
        yield cp, agent


def finished(cp: ControlPlaneProcess, token: str, session: str, command_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    with cp.client(token) as client:
        while True:
            response = client.get(f"{COMMANDS}{command_id}/", headers={"X-Work-Session": session})
            assert response.status_code == 200, response.text
            got = response.json()
            if got["handled_at"] is not None:
                return dict(got)
            assert time.monotonic() < deadline, got
            time.sleep(0.05)


def audit_lines(agent: AgentProcess, command_id: str) -> list[dict[str, Any]]:
    path = agent.workdir / "logs" / "audit.log"
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [e for e in lines if e.get("command_id") == command_id]


def test_api_sudo_decisions_name_the_principal_session_and_code(
    stack: tuple[ControlPlaneProcess, AgentProcess],
) -> None:
    cp, agent = stack
    user_id, username, token = new_login(cp, superuser=True)
    session = active_session(
        cp, token, server=agent.name, scopes=["command", "sudo"], sudo=["id -u"]
    )["id"]
    with cp.client(token) as client:
        whoami = client.get("/api/auth/whoami/").json()
        assert whoami["id"] == user_id
        made = {}
        for line in ("id -u", "id -un"):
            body = {"server": agent.name, "line": line, "sudo": True, "work_session": session}
            created = client.post(COMMANDS, json=body)
            assert created.status_code == 201, created.text
            made[line] = created.json()["id"]
    allowed = finished(cp, token, session, made["id -u"])
    refused = finished(cp, token, session, made["id -un"])
    assert (allowed["exit_code"], allowed["result"]) == (0, "0\n")
    assert refused["exit_code"] == 126
    assert refused["error_phase"] == "denied"
    assert refused["error_code"] == "sudo_pattern_not_allowed"

    # The agent's audit log: who asked, under which session, and the refusal's code.
    for line, command_id, ok in (("id -u", made["id -u"], True), ("id -un", made["id -un"], False)):
        entries = audit_lines(agent, command_id)
        decisions = [e for e in entries if e["event"] == "sudo.decision"]
        assert len(decisions) == 1, entries
        decision = decisions[0]
        assert decision["allowed"] is ok
        assert decision["code"] == ("allowed" if ok else "sudo_pattern_not_allowed")
        assert decision["work_session"] == session
        assert decision["requested_by"]["user_id"] == user_id
        assert decision["requested_by"]["username"] == username
        assert decision["requested_by"]["token_id"]
        received = next(e for e in entries if e["event"] == "command.received")
        assert received["requested_by"] == decision["requested_by"]
        assert received["work_session"] == session, line
    refusal = next(e for e in audit_lines(agent, made["id -un"]) if e["event"] == "command.refused")
    assert refusal["reason"] == "sudo_pattern_not_allowed"

    # The session's timeline: both commands, by whom, and the refused one with its code.
    with cp.client(token) as client:
        items = client.get(f"/api/work-sessions/sessions/{session}/timeline/").json()["results"]
    rows = {i["command_id"]: i for i in items if i["type"] == "command"}
    ok_row, refused_row = rows[made["id -u"]], rows[made["id -un"]]
    assert ok_row["actor"] == username
    assert ok_row["sudo"] is True
    assert ok_row["denied"] is False
    assert "code" not in ok_row
    assert refused_row["actor"] == username
    assert refused_row["sudo"] is True
    assert refused_row["denied"] is True
    assert refused_row["code"] == "sudo_pattern_not_allowed"
    assert refused_row["exit_code"] == 126
    assert refused_row["requested_token"] == decision["requested_by"]["token_id"]
