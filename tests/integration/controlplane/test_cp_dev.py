"""``fleetgate-controlplane dev``: files, modes, idempotence, clean stop."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from fleetgate.agent.config import parse as parse_agent_config
from tests.support.controlplane import REPO_ROOT


@pytest.fixture(scope="module")
def backend() -> str:
    """``dev`` (``make run``) always keeps its SQLite file in its folder: one run."""
    return "sqlite"


def _start(directory: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    out = log.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetgate.controlplane",
            "dev",
            "--port",
            "0",
            "--dir",
            str(directory),
        ],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "CONTROLPLANE_LOG_FORMAT": "json"},
    )
    out.close()
    # The URL is printed once the server listens; wait for the agentctl config too.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "control plane: http://" in text and (directory / "agentctl.toml").exists():
            url = text.split("control plane: ", 1)[1].split()[0]
            return proc, url
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"dev did not start:\n{log.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise


def test_dev_environment(tmp_path: Path) -> None:
    directory = tmp_path / "dev"
    proc, url = _start(directory, tmp_path / "dev1.log")
    try:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for secret in ("admin.token", "admin.password", "agentctl.toml", "agent/server.key"):
            assert stat.S_IMODE((directory / secret).stat().st_mode) == 0o600, secret
        agentctl = tomllib.loads((directory / "agentctl.toml").read_text())
        assert agentctl["url"] == url
        token = (directory / "admin.token").read_text().strip()
        assert agentctl["token"] == token
        raw = tomllib.loads((directory / "agent/agent.toml").read_text())
        config = parse_agent_config(raw)
        assert str(config.control_plane.url).rstrip("/") == url
        assert config.identity.key_file == directory.resolve() / "agent/server.key"
        assert config.state_dir == directory.resolve() / "agent/state"
        whoami = httpx.get(f"{url}/api/auth/whoami/", headers={"Authorization": f"token={token}"})
        assert whoami.json()["username"] == "admin"
        servers = httpx.get(
            f"{url}/api/servers/servers/", headers={"Authorization": f"token={token}"}
        ).json()
        assert [s["id"] for s in servers["results"]] == [str(config.identity.server_id)]
        password = (directory / "admin.password").read_text().strip()
        login = httpx.post(
            f"{url}/api/auth/login/", json={"username": "admin", "password": password}
        )
        assert login.status_code == 200, login.text  # the console's login
    finally:
        assert _stop(proc) == 0
    log = (tmp_path / "dev1.log").read_text(errors="replace")
    assert token not in log
    assert password not in log
    assert (directory / "agent/server.key").read_text().strip() not in log

    # Again: the same database, token and server identity.
    proc, _url = _start(directory, tmp_path / "dev2.log")
    try:
        assert (directory / "admin.token").read_text().strip() == token
        assert (directory / "admin.password").read_text().strip() == password
        again = tomllib.loads((directory / "agent/agent.toml").read_text())
        assert again["identity"]["server_id"] == raw["identity"]["server_id"]
    finally:
        assert _stop(proc) == 0
