"""Nothing lost, nothing run twice: 1000 commands through crashes and network cuts.

Real processes on loopback: a control plane, an agent dialling it through a TCP proxy the
test controls, and a submitter thread creating commands through the HTTP API. While the
commands flow, the test injects four faults, each as soon as enough commands were
submitted (no fixed timeline): the control plane is SIGKILLed and restarted on the same
database and port, the agent is SIGKILLed and restarted on the same state directory, the
network is blackholed (silent: only keepalives notice) until the control plane declares
the agent gone, and the network drops every connection (loud).

Each command appends its own token to a file and prints it. At the end every command
must have exactly one final result; a command without a normal result must be
``interrupted`` (the agent was killed while it was running; queued ones run after the
restart), so at most ``max_concurrent_commands`` of them; no token may
appear twice in the file; and the stored output of every normal result must be exactly
the token. The figures are printed and written to ``figures.json`` in the work directory.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.agent import AgentProcess, start_agent
from tests.support.controlplane import ControlPlaneProcess, start_control_plane
from tests.support.proxy import TcpProxy, running_proxy
from tests.support.users import temporary_user


COMMANDS = 1000
DEADLINE = 150.0
"""Seconds for the whole scenario; the test's own timeout is a little above."""
POLL = 0.05
"""Seconds between two polls of a condition (each poll has a deadline)."""

CONCURRENCY = 64
IDLE_TIMEOUT = 3.0
"""The control plane's agent idle timeout in this test, seconds."""
KEEPALIVE = {"keepalive_interval": 0.5, "keepalive_timeout": 1.0, "open_timeout": 1.0}


class Submitter(threading.Thread):
    """Creates the commands one by one, retrying through outages without duplicates.

    A POST whose connection fails may or may not have created the command; the token in
    its line finds out (``?search=``) before it is sent again. 503 SERVER_NOT_CONNECTED
    means the agent is reconnecting: wait and retry.
    """

    def __init__(
        self,
        cp: ControlPlaneProcess,
        server: str,
        marker: Path,
        deadline: float,
        username: str | None = None,
    ):
        super().__init__(daemon=True)
        self.cp, self.server, self.marker, self.deadline = cp, server, marker, deadline
        self.username = username
        self.tokens: dict[str, str] = {}  # token -> command id
        self.stats: Counter[str] = Counter()
        self.error: BaseException | None = None
        self._progress = threading.Condition()

    @property
    def submitted(self) -> int:
        return len(self.tokens)

    def wait_for(self, count: int) -> None:
        """Block until ``count`` commands were created (or the submitter failed)."""
        with self._progress:
            ok = self._progress.wait_for(
                lambda: self.submitted >= count or self.error is not None or not self.is_alive(),
                timeout=max(0.0, self.deadline - time.monotonic()),
            )
        assert self.error is None, f"submitter failed after {self.submitted}: {self.error!r}"
        assert ok, f"submitter stuck at {self.submitted} commands"

    def run(self) -> None:
        try:
            with self.cp.client(timeout=30) as client:
                for n in range(COMMANDS):
                    token = f"tok{n:04d}x{uuid.uuid4().hex[:10]}"
                    command_id = self._submit(client, token)
                    with self._progress:
                        self.tokens[token] = command_id
                        self._progress.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            self.error = exc
            with self._progress:
                self._progress.notify_all()

    def _submit(self, client: httpx.Client, token: str) -> str:
        body = {"server": self.server, "line": f"echo {token} >> {self.marker}; echo {token}"}
        if self.username is not None:
            body["username"] = self.username
        while True:
            self._check_deadline()
            try:
                response = client.post("/api/events/commands/", json=body)
            except httpx.TransportError:
                self.stats["post_outcome_unknown"] += 1
                found = self._lookup(client, token)
                if found is not None:
                    self.stats["post_found_after_error"] += 1
                    return found
                continue
            if response.status_code == 201:
                return str(response.json()["id"])
            if response.status_code == 503:
                self.stats["post_server_not_connected"] += 1
                time.sleep(POLL)
                continue
            raise AssertionError(f"POST: {response.status_code} {response.text}")

    def _lookup(self, client: httpx.Client, token: str) -> str | None:
        while True:
            self._check_deadline()
            try:
                response = client.get("/api/events/commands/", params={"search": token})
            except httpx.TransportError:
                time.sleep(POLL)  # the control plane is still down
                continue
            assert response.status_code == 200, response.text
            results = response.json()["results"]
            assert len(results) <= 1, f"{token} was created twice"
            return None if not results else str(results[0]["id"])

    def _check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"submission still failing after {self.submitted} commands")


def poll(what: str, condition: Any, deadline: float) -> None:
    """Poll ``condition()`` until it is true; fail naming ``what`` at the deadline."""
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(POLL)


def is_connected(cp: ControlPlaneProcess, server_id: str) -> bool | None:
    """The control plane's view of the agent (None while it does not answer)."""
    try:
        with cp.client(timeout=5) as client:
            response = client.get(f"/api/servers/servers/{server_id}/")
    except httpx.TransportError:
        return None
    return bool(response.json()["is_connected"]) if response.status_code == 200 else None


def all_commands(client: httpx.Client, server_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    page = 1
    while True:
        response = client.get(
            "/api/events/commands/",
            params={"server": server_id, "page": page, "page_size": 100, "ordering": "added_at"},
        )
        assert response.status_code == 200, response.text
        out.extend(response.json()["results"])
        if response.json()["next"] is None:
            return out
        page += 1


def chunks_text(client: httpx.Client, command_id: str) -> str:
    response = client.get(f"/api/events/commands/{command_id}/chunks/", params={"page_size": 100})
    assert response.status_code == 200, response.text
    chunks = response.json()["results"]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    return "".join(c["content"] for c in chunks)


@pytest.fixture(
    params=[
        pytest.param(None, id="root"),
        # Commands that change identity go through the spawner helpers.
        pytest.param("user", id="user", marks=pytest.mark.root),
    ]
)
def command_user(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Who the commands run as: the agent's own account, or a throw-away user (removed
    after the agent stopped; its removal fails if a process of the user is left)."""
    if request.param is None:
        yield None
        return
    with temporary_user() as user:
        yield user.name


@pytest.fixture
def marker(tmp_path: Path, command_user: str | None) -> Iterator[Path]:
    """The file every command appends its token to, writable by the commands' user."""
    if command_user is None:
        path = tmp_path / "ran.txt"
        path.touch(mode=0o666)
        yield path
        return
    # tmp_path's parents are root's alone (0700): another user could not reach it.
    with tempfile.TemporaryDirectory(prefix="fleet-fault-") as directory:
        os.chmod(directory, 0o755)
        path = Path(directory) / "ran.txt"
        path.touch()
        os.chmod(path, 0o666)
        yield path


@pytest.fixture
def stack(
    tmp_path: Path, command_user: str | None
) -> Iterator[tuple[ControlPlaneProcess, TcpProxy, AgentProcess]]:
    cp = start_control_plane(
        tmp_path / "cp",
        env={
            "CONTROLPLANE_AGENT_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
            "CONTROLPLANE_LOG_LEVEL": "warning",
        },
    )
    try:
        with running_proxy(cp.port) as proxy:
            agent = start_agent(
                cp,
                tmp_path / "agent",
                url=f"http://127.0.0.1:{proxy.port}",
                sections={
                    "backhaul": {**KEEPALIVE, "stable_after": 2.0},
                    "limits": {"max_concurrent_commands": CONCURRENCY, "shutdown_grace": 2},
                    "logging": {"level": "warning"},
                },
            )
            try:
                yield cp, proxy, agent
            finally:
                agent.stop()
    finally:
        cp.stop()


@pytest.mark.timeout(DEADLINE + 30)
def test_nothing_lost_nothing_run_twice(
    stack: tuple[ControlPlaneProcess, TcpProxy, AgentProcess],
    marker: Path,
    command_user: str | None,
    tmp_path: Path,
    record_property: Any,
) -> None:
    """Every command has exactly one result and ran at most once, whatever broke."""
    cp, proxy, agent = stack
    deadline = time.monotonic() + DEADLINE
    submitter = Submitter(cp, agent.name, marker, deadline, command_user)
    submitter.start()
    faults: list[str] = []
    started = time.monotonic()

    submitter.wait_for(150)
    cp.restart(kill=True)
    faults.append("control plane SIGKILL + restart")

    submitter.wait_for(400)
    agent.kill()
    agent.start(wait=False)
    faults.append("agent SIGKILL + restart")

    submitter.wait_for(650)
    poll("the agent is back", lambda: is_connected(cp, agent.server_id) is True, deadline)
    proxy.set_mode("blackhole")
    blackholed = time.monotonic()
    # Only the keepalives can tell: wait for the control plane's idle timeout to fire.
    poll("the control plane notices", lambda: is_connected(cp, agent.server_id) is False, deadline)
    silent_for = time.monotonic() - blackholed
    proxy.set_mode("pass")
    faults.append(f"network blackhole ({silent_for:.1f} s)")
    # Both heartbeats fire in bounded time: the control plane's idle timeout (3 s here)
    # and the agent's ping (0.5 s) + pong timeout (1 s).
    assert silent_for < IDLE_TIMEOUT + 5, f"dead agent noticed only after {silent_for:.1f} s"
    assert "no pong within 1 s" in agent.log_path.read_text()

    submitter.wait_for(850)
    poll("the agent is back", lambda: is_connected(cp, agent.server_id) is True, deadline)
    proxy.set_mode("drop")
    poll("the drop is noticed", lambda: is_connected(cp, agent.server_id) is False, deadline)
    proxy.set_mode("pass")
    faults.append("network drop")

    submitter.join(max(0.0, deadline - time.monotonic()))
    assert submitter.error is None, repr(submitter.error)
    assert submitter.submitted == COMMANDS

    with cp.client(timeout=30) as client:
        commands: list[dict[str, Any]] = []

        def all_final() -> bool:
            commands[:] = all_commands(client, agent.server_id)
            return all(c["handled_at"] is not None for c in commands)

        poll("every command has a result", all_final, deadline)
        by_id = {c["id"]: c for c in commands}
        outputs = {
            c["id"]: chunks_text(client, c["id"])
            for c in commands
            if c["error_phase"] != "interrupted"
        }

    runs = Counter(marker.read_text().split())
    interrupted = [c for c in commands if c["error_phase"] == "interrupted"]
    lost: list[str] = []
    for token, command_id in submitter.tokens.items():
        command = by_id[command_id]
        if command["error_phase"] == "interrupted":
            continue
        expected = f"{token}\n"
        if (command["exit_code"], command["result"], outputs[command_id]) != (
            0,
            expected,
            expected,
        ):
            lost.append(command_id)
    duplicated = [token for token, n in runs.items() if n > 1]
    figures = {
        "commands": COMMANDS,
        "faults_injected": len(faults),
        "faults": faults,
        "finished": len(commands) - len(interrupted),
        "interrupted": len(interrupted),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "seconds": round(time.monotonic() - started, 1),
        **dict(submitter.stats),
    }
    print(json.dumps(figures))
    (tmp_path / "figures.json").write_text(json.dumps(figures, indent=2))
    for key, value in figures.items():
        record_property(key, value)

    assert len(commands) == COMMANDS, "the submitter created a command twice"
    assert set(by_id) == set(submitter.tokens.values())
    assert duplicated == [], f"ran twice: {duplicated[:5]}"
    assert lost == [], f"results lost or wrong: {lost[:5]}"
    normal = [t for t, cid in submitter.tokens.items() if by_id[cid]["error_phase"] is None]
    assert all(runs[t] == 1 for t in normal), "a command with a normal result did not run"
    # Only commands that held a slot when the agent was killed; queued ones ran later.
    assert len(interrupted) <= CONCURRENCY
    for command in interrupted:
        assert command["status"]["text"] == "Interrupted"
        assert command["exit_code"] == -1
        assert "agent restarted" in command["status"]["message"]
