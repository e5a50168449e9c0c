"""The control plane process: crash and restart, clean shutdown, the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fleetgate.shared.protocol import CommandRun
from tests.support.controlplane import REPO_ROOT, FakeAgent, running_control_plane


async def test_kill_and_restart_keeps_data_and_port(tmp_path: Path) -> None:
    with running_control_plane(tmp_path / "cp") as cp:
        server = await asyncio.to_thread(cp.new_server, "keep-me")
        agent = await FakeAgent.connect(cp, server.id, server.key)
        async with httpx.AsyncClient(base_url=cp.url, headers=cp.auth_headers()) as client:
            response = await client.post(
                "/api/events/commands/", json={"server": server.name, "line": "id"}
            )
        created = response.json()
        run = await agent.expect(CommandRun)
        port = cp.port
        await asyncio.to_thread(cp.restart, kill=True)
        assert cp.port == port
        await asyncio.wait_for(agent.ws.wait_closed(), 10)
        # Sent but never delivered: the new process redelivers it on hello.
        agent = await FakeAgent.connect(cp, server.id, server.key)
        again = await agent.expect(CommandRun)
        assert again.command_id == run.command_id
        async with httpx.AsyncClient(base_url=cp.url, headers=cp.auth_headers()) as client:
            body = (await client.get(f"/api/events/commands/{created['id']}/")).json()
        assert body["line"] == "id"
        assert body["status"]["text"] == "Sent"
        await agent.close()


def test_sigterm_exits_cleanly(tmp_path: Path) -> None:
    with running_control_plane(tmp_path / "cp") as cp:
        cp.stop()
        assert cp.process is not None
        assert cp.process.returncode == 0
        assert "Traceback" not in cp.log_tail()


def test_cli_token_file_is_private_and_secrets_are_not_printed(tmp_path: Path) -> None:
    db = tmp_path / "x.db"

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fleetgate.controlplane", *args, "--db", str(db)],
            cwd=REPO_ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    made = run(
        "user", "create", "carol", "--email", "c@x.org", "--password-stdin", stdin="pw-secret\n"
    )
    assert made.returncode == 0, made.stderr
    assert "pw-secret" not in made.stdout + made.stderr
    assert run("user", "create", "carol").returncode == 1
    token_file = tmp_path / "carol.token"
    made = run("token", "create", "--user", "carol", "--file", str(token_file))
    assert made.returncode == 0, made.stderr
    key = token_file.read_text().strip()
    assert key.startswith("fat_")
    assert key not in made.stdout + made.stderr
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    printed = run("token", "create", "--service", "ci")
    assert printed.stdout.strip().startswith("fst_")
    assert run("token", "create", "--user", "nobody").returncode == 1


async def test_sigterm_ends_open_streams_promptly(tmp_path: Path) -> None:
    with running_control_plane(tmp_path / "cp") as cp:
        server = await asyncio.to_thread(cp.new_server)
        async with httpx.AsyncClient(base_url=cp.url, headers=cp.auth_headers()) as client:
            created = (
                await client.post(
                    "/api/events/commands/",
                    json={
                        "server": server.id,
                        "line": "id",
                        "scheduled_at": "2099-01-01T00:00:00Z",
                    },
                )
            ).json()
            async with client.stream("GET", f"/api/events/commands/{created['id']}/stream/") as r:
                assert r.status_code == 200
                started = time.monotonic()
                await asyncio.to_thread(cp.process.send_signal, signal.SIGTERM)  # type: ignore[union-attr]
                async with asyncio.timeout(10):
                    lines = [line async for line in r.aiter_lines() if line]
        assert lines == []
        assert await asyncio.to_thread(cp.process.wait, 10) == 0  # type: ignore[union-attr]
        assert time.monotonic() - started < 4.5  # well before the 5 s drain timeout
