"""``fleetgate-agent register`` / ``fleetgate-agent unregister`` against a real control plane."""

from __future__ import annotations

import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetgate.controlplane.grants import GrantSigner, key_path, load_or_create_key
from fleetgate.controlplane.sshca import SshAuthority, ca_key_path, load_or_create_ca
from tests.support.agent import AgentProcess
from tests.support.controlplane import REPO_ROOT, ControlPlaneProcess, running_control_plane


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    with running_control_plane(tmp_path / "cp") as cp:
        yield cp


def agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetgate.agent", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_register_is_idempotent_and_unregister_deletes(
    cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    etc = tmp_path / "etc" / "fleetgate-agent"  # does not exist yet: register creates it
    config = etc / "agent.toml"
    token_file = tmp_path / "token"
    token_file.write_text(cp.admin_token + "\n")
    register = ("register", "--url", cp.url, "--token-file", str(token_file), "--config")

    first = agent_cli(*register, str(config), "--name", "web-01")
    assert first.returncode == 0, first.stderr
    assert "registered as web-01" in first.stdout
    assert stat.S_IMODE(etc.stat().st_mode) == 0o700
    key_file = etc / "server.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.stat().st_uid == 0
    key = key_file.read_text().strip()
    written = tomllib.loads(config.read_text())
    server_id = written["identity"]["server_id"]
    assert written["control_plane"]["url"] == cp.url
    assert written["identity"]["key_file"] == str(key_file)
    # The grant key seen at registration is pinned: gated work is verified against it.
    assert written["identity"]["control_plane_key"] == _grant_key(cp)
    with cp.client() as api:
        assert api.get(f"/api/servers/servers/{server_id}/").json()["name"] == "web-01"
        hosts = api.get("/api/ssh/hosts/").json()["results"]
    # The SSH host key is made now (0600, beside the config), announced, and the SSH CA
    # seen at registration is pinned like the grant key.
    host_key = Path(written["ssh"]["host_key_file"])
    assert host_key == etc / "ssh_host_ed25519_key"
    assert stat.S_IMODE(host_key.stat().st_mode) == 0o600
    public = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(host_key)], capture_output=True, text=True, check=True
    ).stdout.split()[:2]
    assert [h["host_key"] for h in hosts if h["id"] == server_id] == [" ".join(public)]
    assert written["identity"]["ssh_ca_key"] == _ssh_ca_key(cp)

    # Same name, valid identity: nothing happens, and it says so.
    # (No valid token needed: nothing is posted.)
    again = agent_cli(
        *("register", "--url", cp.url, "--token", "not-even-valid"),
        *("--config", str(config), "--name", "web-01"),
    )
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    assert key_file.read_text().strip() == key
    assert tomllib.loads(config.read_text())["identity"]["server_id"] == server_id

    # Another name for an already registered machine is refused, nothing changes.
    other = agent_cli(*register, str(config), "--name", "web-02")
    assert other.returncode == 1
    assert "already registered as 'web-01'" in other.stderr

    # The stored identity works: an agent with this config connects. Keep the test's
    # directories out of /var and /run by adding them to the registered config.
    text = config.read_text()
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\nruntime_dir = "{tmp_path / "run"}"\n'
        f'logs_dir = "{tmp_path / "logs"}"\n' + text
    )
    agent = AgentProcess(cp, tmp_path, "web-01", server_id, config)
    try:
        agent.start()
    finally:
        agent.stop()

    gone = agent_cli("unregister", "--config", str(config))
    assert gone.returncode == 0, gone.stderr
    assert "deleted on the control plane" in gone.stdout
    assert not key_file.exists()
    assert "server_id" not in tomllib.loads(config.read_text())["identity"]
    with cp.client() as api:
        assert api.get(f"/api/servers/servers/{server_id}/").status_code == 404

    # Registering again after unregistering works, keeping the settings added above.
    anew = agent_cli(*register, str(config), "--name", "web-01")
    assert anew.returncode == 0, anew.stderr
    renewed = tomllib.loads(config.read_text())
    assert renewed["identity"]["server_id"] != server_id
    assert renewed["state_dir"] == str(tmp_path / "state")

    outputs = (
        "".join(r.stdout + r.stderr for r in (first, again, other, gone, anew))
        + agent.log_path.read_text()
        + cp.log_path.read_text()
    )
    for secret in (cp.admin_token, key, (etc / "server.key").read_text().strip()):
        assert secret not in outputs


def test_register_errors_have_distinct_exit_statuses(
    cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    refused = agent_cli(
        "register", "--url", cp.url, "--token", "fat_wrong", "--name", "x1", "--config", str(config)
    )
    assert refused.returncode == 77
    assert "refused the token" in refused.stderr
    assert "fat_wrong" not in refused.stderr
    assert not config.exists()

    cp.register_server("taken")
    taken = agent_cli(
        *("register", "--url", cp.url, "--token", cp.admin_token),
        *("--name", "taken", "--config", str(config)),
    )
    assert taken.returncode == 1
    assert "already registered" in taken.stderr
    assert not config.exists()

    unreachable = agent_cli(
        *("register", "--url", "http://127.0.0.1:9", "--token", cp.admin_token),
        *("--name", "x2", "--config", str(config)),
    )
    assert unreachable.returncode == 69
    assert "cannot reach" in unreachable.stderr


def test_own_server_endpoints_need_the_agents_credentials(cp: ControlPlaneProcess) -> None:
    server = cp.new_server()
    agent_auth = {"Authorization": f'id="{server.id}", key="{server.key}"'}
    with cp.client() as api:
        # A user token is not an agent credential.
        assert api.get("/api/servers/servers/-/").status_code == 401
        assert api.delete("/api/servers/servers/-/").status_code == 401
        wrong = {"Authorization": f'id="{server.id}", key="wrong"'}
        assert api.delete("/api/servers/servers/-/", headers=wrong).status_code == 401
        me = api.get("/api/servers/servers/-/", headers=agent_auth)
        assert me.status_code == 200
        assert me.json()["name"] == server.name
        assert api.delete("/api/servers/servers/-/", headers=agent_auth).status_code == 204
        assert api.get(f"/api/servers/servers/{server.id}/").status_code == 404
        assert api.get("/api/servers/servers/-/", headers=agent_auth).status_code == 401


def _ssh_ca_key(cp: ControlPlaneProcess) -> str:
    """The control plane's SSH CA public key, read from beside its database."""
    return SshAuthority(load_or_create_ca(ca_key_path(cp.db_path))).public_line


def _grant_key(cp: ControlPlaneProcess) -> str:
    """The control plane's grant-signing public key, read from beside its database."""
    return GrantSigner(load_or_create_key(key_path(cp.db_path))).public_key_b64
