"""``ssh -L`` through the tunnel policy, and every refusal with the reason the OpenSSH
client prints: no session, each kind without its scope, bad certificates (expired, wrong
principal, another server's, another CA's), agent forwarding, ``-R``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncssh
import pytest

from fleetgate.shared.protocol.ssh import format_key_id
from tests.integration.ssh.conftest import SSH_TIMEOUT, SshStack, forwarding, ssh
from tests.support.accounts import new_login
from tests.support.tunnel import (
    assert_echoed,
    connect_when_listening,
    free_port,
    threaded_echo_server,
)


pytestmark = pytest.mark.root


def stderr(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stderr.decode("utf-8", "replace")


def with_certificate(config: Path, certificate: str, name: str) -> Path:
    """A copy of ``config`` whose CertificateFile holds ``certificate``."""
    cert = config.with_name(f"{name}-cert.pub")
    cert.write_text(certificate + "\n", encoding="utf-8")
    lines = [
        f"    CertificateFile {cert}" if line.strip().startswith("CertificateFile") else line
        for line in config.read_text(encoding="utf-8").splitlines()
    ]
    variant = config.with_name(f"{name}.config")
    variant.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return variant


def client_public_key(sstack: SshStack, name: str) -> str:
    key = asyncssh.read_private_key(str(sstack.root / name / "ssh" / "id_ed25519"))
    return key.export_public_key().decode()


def forged(sstack: SshStack, name: str, ca: asyncssh.SSHKey, **changes: object) -> str:
    """A certificate for the test's client key signed by ``ca`` (the real CA, or not)."""
    user_key = asyncssh.import_public_key(client_public_key(sstack, name))
    now = int(time.time())
    session = changes.pop("session", None)
    fields: dict[str, object] = {
        "key_id": format_key_id(sstack.agent.server_id, session, sstack.user.name),  # type: ignore[arg-type]
        "principals": [sstack.user.name],
        "valid_after": now - 60,
        "valid_before": now + 600,
    }
    fields.update(changes)
    cert = ca.generate_user_certificate(user_key, **fields)  # type: ignore[arg-type]
    return cert.export_certificate().decode().strip()


def real_ca(sstack: SshStack) -> asyncssh.SSHKey:
    db = sstack.cp.db_path
    return asyncssh.read_private_key(str(db.with_name(db.name + ".ssh-ca-key")))


def test_ssh_L_reaches_an_allowed_loopback_port(sstack: SshStack) -> None:
    session = sstack.session(("tunnel",))
    config = sstack.configure("forward", session)
    local = free_port()
    with (
        threaded_echo_server() as target,
        forwarding(config, "-L", f"127.0.0.1:{local}:127.0.0.1:{target}", sstack.server) as ssh_l,
        connect_when_listening(local, ssh_l) as sock,
    ):
        assert_echoed(sock)
    events = sstack.events(session, lambda es: any(e["type"] == "tunnel" for e in es))
    assert any(e["type"] == "tunnel" and e.get("via") == "ssh" for e in events)


def test_ssh_without_a_work_session_is_refused(sstack: SshStack) -> None:
    config = sstack.configure("nosession", sstack.session())
    proxy = (
        f"{sys.executable} -m fleetgate.agentctl ssh-proxy --config "
        f"{sstack.root / 'nosession' / 'agentctl.toml'} --user %r {sstack.agent.server_id}"
    )
    done = ssh(config, "-o", f"ProxyCommand={proxy}", sstack.server, "true")
    assert done.returncode == 255
    assert "fleetgate: WorkSession required (work_session_required)" in stderr(done)


def test_each_kind_needs_its_scope(sstack: SshStack, tmp_path: Path) -> None:
    files_only = sstack.configure("files-only", sstack.session(("webftp",)))
    done = ssh(files_only, sstack.server, "true")
    assert done.returncode == 126
    assert "running a command needs the 'command' scope" in stderr(done)
    done = ssh(files_only, sstack.server)  # stdin is not a terminal: a shell without a PTY
    assert done.returncode == 126
    assert "an interactive shell needs the 'websh' scope" in stderr(done)
    done = ssh(files_only, "-tt", sstack.server)
    assert "PTY allocation request failed" in stderr(done)  # no permit-pty in the certificate
    done = ssh(files_only, "-W", "127.0.0.1:22", sstack.server)  # a direct-tcpip, as -L
    # No permit-port-forwarding in the certificate of a session without ``tunnel``.
    assert "administratively prohibited: Port forwarding not permitted" in stderr(done)
    commands_only = sstack.configure("commands-only", sstack.session(("command",)))
    batch = tmp_path / "batch"
    batch.write_text("ls\n", encoding="utf-8")
    done = subprocess.run(
        ["sftp", "-F", str(commands_only), "-b", str(batch), sstack.server],
        capture_output=True,
        timeout=SSH_TIMEOUT,
        check=False,
    )
    assert done.returncode != 0
    assert "file transfer (sftp, scp) needs the 'webftp' scope" in stderr(done)
    # The tunnel policy still applies inside a session with the scope.
    tunnels = sstack.configure("tunnels", sstack.session(("tunnel",)))
    done = ssh(tunnels, "-W", "127.0.0.1:1000", sstack.server)
    assert "administratively prohibited: fleetgate: port 1000 is not allowed" in stderr(done)


def test_bad_certificates_are_refused_with_the_reason(sstack: SshStack) -> None:
    session = sstack.session()
    config = sstack.configure("certs", session)
    ca = real_ca(sstack)
    now = int(time.time())
    cases = {
        "expired": (
            forged(sstack, "certs", ca, session=session, valid_before=now - 10),
            "the certificate expired at",
        ),
        "other-ca": (
            forged(sstack, "certs", asyncssh.generate_private_key("ssh-ed25519"), session=session),
            "the certificate is not signed by this fleet's certificate authority",
        ),
        "other-session": (
            forged(sstack, "certs", ca, session=sstack.session()),
            "the certificate belongs to another work session",
        ),
    }
    # Signed by the real CA for the same user and session, but bound to another server
    # (what the control plane issues for that server).
    other = sstack.cp.new_server()
    cases["other-server"] = (
        forged(sstack, "certs", ca, key_id=format_key_id(other.id, session, sstack.user.name)),
        "the certificate was issued for another server",
    )
    for name, (certificate, reason) in cases.items():
        done = ssh(with_certificate(config, certificate, name), sstack.server, "true")
        assert done.returncode == 255, name
        assert f"fleetgate: {reason}" in stderr(done), (name, stderr(done))
        assert "Permission denied (publickey)" in stderr(done), name
    # A login the certificate does not name.
    done = ssh(config, "-l", "root", sstack.server, "true")
    assert done.returncode == 255
    assert f"the certificate is for {sstack.user.name}, not root" in stderr(done)


def test_agent_forwarding_and_remote_forwarding_say_why(sstack: SshStack, tmp_path: Path) -> None:
    config = sstack.configure("forwarding", sstack.session())
    agent_sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not agent_sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        done = subprocess.run(
            ["ssh", "-F", str(config), "-A", sstack.server, "echo ran"],
            env={**os.environ, "SSH_AUTH_SOCK": str(agent_sock)},
            capture_output=True,
            timeout=SSH_TIMEOUT,
            check=False,
        )
    finally:
        agent.terminate()
        agent.wait(timeout=10)
    assert done.stdout == b"ran\n"
    refused = "agent forwarding (-A) is refused: this agent does not offer it"
    assert refused in stderr(done), stderr(done)
    done = ssh(config, "-R", "0:127.0.0.1:22", sstack.server, "echo ran")
    assert "remote forwarding (-R) is refused: [ssh] remote_forwarding = false" in stderr(done)
    assert "remote port forwarding failed" in stderr(done)


def test_an_ordinary_user_gets_certificates_only_for_themself(sstack: SshStack) -> None:
    _, _, token = new_login(sstack.cp, server_username="deploy")
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    with sstack.cp.client(token) as client:
        other = client.post(
            "/api/ssh/certificates/",
            json={"server": sstack.server, "public_key": key, "username": "root"},
            headers={"X-Work-Session": str(uuid.uuid4())},
        )
        assert other.status_code == 403, other.text
        assert other.json()["code"] == "IDENTITY_NOT_ALLOWED"
        assert "'deploy'" in other.json()["detail"]
        own = client.post(
            "/api/ssh/certificates/", json={"server": sstack.server, "public_key": key}
        )
        assert own.status_code == 403, own.text  # no work session
        assert own.json()["code"] == "work_session_required"
        hosts = client.get("/api/ssh/hosts/")
        assert hosts.status_code == 403
        assert hosts.json()["code"] == "work_session_required"
        bad = client.post(
            "/api/ssh/certificates/", json={"server": sstack.server, "public_key": "ssh-rsa nope"}
        )
        assert bad.status_code == 400


def test_a_users_ssh_login_is_their_own_server_account(sstack: SshStack) -> None:
    """A non-superuser logs in as the server account a superuser mapped them to, with a
    session a superuser approved; naming root is refused before any certificate."""
    _, _, token = new_login(sstack.cp, server_username=sstack.user.name)
    with sstack.cp.client(token) as client:
        created = client.post(
            "/api/work-sessions/sessions/",
            json={
                "description": "ssh as myself",
                "servers": [sstack.server],
                "scopes": ["command"],
                "duration": "1h",
            },
        ).json()
    assert created["status"] == "pending"
    with sstack.cp.client() as admin:
        approved = admin.post(f"/api/work-sessions/sessions/{created['id']}/approve/")
        assert approved.json()["status"] == "active", approved.text
    mine = sstack.cli("own-account")
    config = mine.env["AGENTCTL_CONFIG"]
    Path(config).write_text(f'url = "{sstack.cp.url}"\ntoken = "{token}"\n', encoding="utf-8")
    root = mine.run("ssh-config", "--work-session", created["id"], "--user", "root")
    assert root.returncode != 0
    assert "IDENTITY_NOT_ALLOWED" in root.stderr or "not allowed" in root.stderr, root.stderr
    path = Path(config).parent / "ssh_config"
    made = mine.run("ssh-config", "--work-session", created["id"], "-o", str(path))
    assert made.returncode == 0, made.stderr
    done = ssh(path, sstack.server, "id -un")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == sstack.user.name
