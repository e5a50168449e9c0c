"""Two replicas behind HAProxy terminating TLS (a throw-away CA), as deployed for
replicas: the agent dials ``wss://`` through the balancer and verifies it with its
``ca_file``; agentctl and the API use ``https://``. Commands, a websh and a file transfer
cross it; then the replica holding the agent is killed (SIGKILL) in the middle of 1,000
commands: every command gets exactly one result, none runs twice, and the agent is back
on the other replica within its backoff."""

from __future__ import annotations

import os
import shutil
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.e2e.commands import run_command
from tests.support.agent import AgentProcess, start_agent
from tests.support.agentctl import AgentctlRunner
from tests.support.controlplane import NODELAY, REPO_ROOT, ControlPlaneProcess
from tests.support.files import sha256_file, write_random
from tests.support.haproxy import HAProxy, running_haproxy
from tests.support.postgres import PostgresCluster
from tests.support.replicas import running_replicas
from tests.support.tls import ThrowawayCA, make_ca
from tests.support.users import temporary_user
from tests.support.waiting import eventually_blocking
from tests.support.websh import shell_round


pytestmark = pytest.mark.timeout(240)

SERVER = "lb-01"
COMMANDS = 1000


@dataclass
class Stack:
    replicas: list[ControlPlaneProcess]
    lb: HAProxy
    ca: ThrowawayCA
    agent: AgentProcess
    pg: PostgresCluster
    database: str
    root: Path

    def api(self, base: str | None = None) -> httpx.Client:
        """An API client through the balancer (verified with the CA), or to ``base``."""
        cp = self.replicas[0]
        return httpx.Client(
            base_url=base or self.lb.url,
            headers=cp.auth_headers(),
            timeout=30,
            transport=httpx.HTTPTransport(
                socket_options=NODELAY,
                verify=ssl.create_default_context(cafile=self.ca.cert_path),
            ),
        )

    def holder(self) -> str:
        """The replica holding the agent's link now."""
        return self.pg.psql(
            f"SELECT replica_id FROM cluster_links WHERE server_id = '{self.agent.server_id}'",
            self.database,
        ).strip()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg: PostgresCluster) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("balancer")
    ca = make_ca(root / "ca")
    cert, key = ca.issue(root / "pki", ip="127.0.0.1")
    database = pg.create_database()
    trusted = {"CONTROLPLANE_TRUSTED_PROXIES": '["127.0.0.1"]'}
    with running_replicas(root / "cp", database, extra=trusted) as replicas:
        backends = [("a", replicas[0].port), ("b", replicas[1].port)]
        with running_haproxy(root / "lb", backends, tls=(cert, key)) as lb:
            agent = start_agent(
                replicas[0], root / "agent", name=SERVER, url=lb.url, ca_file=ca.cert_path
            )
            try:
                yield Stack(replicas, lb, ca, agent, pg, database.rsplit("/", 1)[1], root)
            finally:
                agent.stop()


def _cli(stack: Stack) -> AgentctlRunner:
    config = stack.root / "agentctl.toml"
    config.write_text(
        f'url = "{stack.lb.url}"\ntoken = "{stack.replicas[0].admin_token}"\n'
        f'ca_file = "{stack.ca.cert_path}"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
    env.update({"AGENTCTL_CONFIG": str(config), "PYTHONUNBUFFERED": "1", "TERM": "xterm"})
    return AgentctlRunner(stack.replicas[0], env)


def test_commands_over_https_and_wss_through_the_balancer(stack: Stack) -> None:
    assert stack.lb.url.startswith("https://")
    assert f'"url": "{stack.lb.url}"' in stack.agent.log_tail(100_000)
    with stack.api() as api:
        for i in range(4):  # round robin: both replicas answer, one holds the agent
            assert run_command(api, SERVER, f"echo via-lb-{i}")["result"] == f"via-lb-{i}\n"
    result = _cli(stack).run("exec", SERVER, "--", "echo", "agentctl", "https")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "agentctl https\n"


def test_behind_the_proxy_cookies_are_secure(stack: Stack) -> None:
    """X-Forwarded-Proto from the trusted balancer: the console's cookies are Secure."""
    with stack.api() as api:
        page = api.get("/console/login")
    assert page.status_code == 200
    cookies = page.headers.get_list("set-cookie")
    assert cookies, page.headers
    assert all("Secure" in c for c in cookies), cookies
    # Straight to a replica over http (nothing forwarded): not Secure.
    with httpx.Client(base_url=stack.replicas[1].url) as direct:
        plain = direct.get("/console/login").headers.get_list("set-cookie")
    assert plain
    assert not any("Secure" in c for c in plain), plain


@pytest.mark.root
async def test_websh_and_file_transfer_through_the_balancer(stack: Stack, tmp_path: Path) -> None:
    cli = _cli(stack)
    with temporary_user() as user:
        argv = cli.argv("websh", SERVER, "-u", user.name)
        await shell_round(argv, cli.env, str(REPO_ROOT), user=user.name, tag="lb", exit_code=5)

        user_dir = Path(tempfile.mkdtemp(prefix="lb-files-", dir="/tmp"))
        os.chown(user_dir, user.uid, user.gid)
        try:
            local = tmp_path / "payload.bin"
            digest = write_random(local, 3 << 20)
            up = cli.run("cp", str(local), f"{SERVER}:{user_dir}/", "-u", user.name)
            assert up.returncode == 0, up.stderr
            assert sha256_file(user_dir / "payload.bin") == digest
            back = tmp_path / "back.bin"
            down = cli.run("cp", f"{SERVER}:{user_dir}/payload.bin", str(back), "-u", user.name)
            assert down.returncode == 0, down.stderr
            assert sha256_file(back) == digest
        finally:
            shutil.rmtree(user_dir, ignore_errors=True)


def test_killing_the_agents_replica_mid_run_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    """Runs last in the module: it kills a replica."""
    holder = stack.holder()
    assert holder in ("a", "b"), holder
    victim = stack.replicas[0 if holder == "a" else 1]
    survivor = stack.replicas[1 if holder == "a" else 0]
    marker = tmp_path / "ran.txt"
    created: list[str] = []
    back_after: list[float] = []
    survivor_id = "b" if holder == "a" else "a"

    def kill_when_a_third_is_in() -> None:
        eventually_blocking(lambda: len(created) >= COMMANDS // 3, timeout=120)
        victim.kill()  # SIGKILL
        killed = time.monotonic()
        eventually_blocking(lambda: stack.holder() == survivor_id, timeout=60)
        back_after.append(time.monotonic() - killed)

    killer = threading.Thread(target=kill_when_a_third_is_in)
    killer.start()
    try:
        # Submitted to the survivor directly: while the agent is on the victim they are
        # forwarded to it, then delivered again by the survivor when the agent is back.
        with httpx.Client(
            base_url=survivor.url, headers=survivor.auth_headers(), timeout=30
        ) as api:
            for i in range(COMMANDS):
                line = f"echo {i} >> {marker}; echo {i}"
                deadline = time.monotonic() + 60
                while True:
                    response = api.post(
                        "/api/events/commands/", json={"server": SERVER, "line": line}
                    )
                    if response.status_code == 201:
                        created.append(response.json()["id"])
                        break
                    # Between the victim's death and the agent's return: not connected
                    # (refused, nothing created); try again.
                    assert response.status_code == 503, response.text
                    assert time.monotonic() < deadline, "the agent did not come back"
                    time.sleep(0.05)
    finally:
        killer.join(timeout=130)
    # Back on the survivor within its backoff (at most 0.5 s per attempt here) and the
    # balancer's health check (200 ms).
    assert back_after, "the victim was not killed, or the agent did not come back"

    def finished() -> list[dict[str, object]]:
        with httpx.Client(base_url=survivor.url, headers=survivor.auth_headers()) as api:
            return [api.get(f"/api/events/commands/{cid}/").json() for cid in created]

    deadline = time.monotonic() + 120
    while True:
        rows = finished()
        pending = [r for r in rows if r["handled_at"] is None]
        if not pending:
            break
        assert time.monotonic() < deadline, f"{len(pending)} commands without a result"
        time.sleep(0.5)
    assert len(rows) == COMMANDS
    assert all(r["exit_code"] == 0 for r in rows), [r for r in rows if r["exit_code"] != 0][:3]
    for i, row in enumerate(rows):
        assert row["result"] == f"{i}\n", row
    runs = Counter(marker.read_text(encoding="utf-8").split())
    assert len(runs) == COMMANDS
    twice = {k: v for k, v in runs.items() if v != 1}
    assert not twice, f"ran more than once: {twice}"
    log = stack.agent.log_tail(2_000_000)
    reconnects = log.count("backhaul.reconnect_in")
    sys.stderr.write(
        f"failover: killed replica {holder} after {COMMANDS // 3} commands; agent linked to "
        f"the survivor {back_after[0]:.2f} s later ({reconnects} reconnect waits)\n"
    )
    # Generous for a loaded machine: the agent's backoff here is at most 0.5 s per try.
    assert back_after[0] < 20
