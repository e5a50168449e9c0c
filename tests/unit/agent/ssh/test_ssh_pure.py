"""The pure parts of SSH access: which certificates are accepted and why not, the key id
binding, request scopes, the sftp-server log, certificate extensions."""

from __future__ import annotations

import base64
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fleetgate.agent.config import parse
from fleetgate.agent.errors import ChannelRefused, ConfigError
from fleetgate.agent.ssh.certs import CertificateFacts, refusal
from fleetgate.agent.ssh.context import scope_refusal
from fleetgate.agent.ssh.hostkey import ensure_host_key
from fleetgate.agent.ssh.processes import parse_sftp_log
from fleetgate.agent.ssh.remote import bind_host, remote_forward_refusal
from fleetgate.agent.ssh.service import SshService
from fleetgate.agent.websh.manager import TerminalManager
from fleetgate.shared.protocol import ChannelOpen, SshSpec
from fleetgate.shared.protocol.grants import GrantClaims
from fleetgate.shared.protocol.ssh import (
    certificate_extensions,
    format_key_id,
    parse_key_id,
)


SERVER = uuid.uuid4()
NOW = 1_800_000_000


def facts(**changes: object) -> CertificateFacts:
    base: dict[str, object] = {
        "key_id": format_key_id(SERVER, "ws-1", "alice"),
        "principals": ("alice",),
        "valid_after": NOW - 60,
        "valid_before": NOW + 600,
        "signed_by_pinned_ca": True,
    }
    base.update(changes)
    return CertificateFacts(**base)  # type: ignore[arg-type]


def check(
    cert: CertificateFacts, *, user: str = "alice", session: str | None = "ws-1"
) -> str | None:
    return refusal(cert, username=user, server_id=SERVER, work_session=session, now=NOW)


def test_a_valid_certificate_is_accepted() -> None:
    assert check(facts()) is None
    assert check(facts(), session=None) is None  # a token's channel: no session to match


@pytest.mark.parametrize(
    ("changes", "user", "expected"),
    [
        (
            {"signed_by_pinned_ca": False},
            "alice",
            "not signed by this fleet's certificate authority",
        ),
        ({"is_user_certificate": False}, "alice", "not a user certificate"),
        ({"key_id": "laptop"}, "alice", "not issued by fleetgate"),
        ({"key_id": format_key_id(uuid.uuid4(), "ws-1", "alice")}, "alice", "another server"),
        ({"valid_before": NOW - 1}, "alice", "expired at 2027-01-15 07:59:59 UTC"),
        ({"valid_after": NOW + 10}, "alice", "not valid before"),
        ({}, "root", "the certificate is for alice, not root"),
        ({"principals": ()}, "alice", "is for nobody"),
        ({"key_id": format_key_id(SERVER, "ws-2", "alice")}, "alice", "another work session"),
    ],
)
def test_refusals_say_why(changes: dict[str, object], user: str, expected: str) -> None:
    reason = check(facts(**changes), user=user)
    assert reason is not None
    assert expected in reason


def test_key_id_round_trip_and_garbage() -> None:
    binding = parse_key_id(format_key_id(SERVER, None, "bob"))
    assert binding is not None
    assert (binding.server_id, binding.work_session, binding.user) == (SERVER, None, "bob")
    assert parse_key_id(format_key_id(str(SERVER), "s", "bob")) is not None
    for bad in ("", "fleetgate:v1:server=nope:session=a:user=b", "fleetgate:v2:x", "a" * 300):
        assert parse_key_id(bad) is None
    with pytest.raises(ValueError, match="badly formed"):
        format_key_id("not-a-uuid", None, "bob")


def claims(scopes: list[str]) -> GrantClaims:
    return GrantClaims(
        command_id=uuid.uuid4(),
        server_id=SERVER,
        auth="work_session",
        work_session="ws-1",
        scopes=scopes,
        servers=[SERVER],
        not_before=NOW,
        expires_at=NOW + 60,
        content="0" * 64,
    )


def test_each_request_needs_its_scope() -> None:
    only_files = claims(["webftp"])
    assert scope_refusal("sftp", only_files) is None
    for op, scope in (("shell", "websh"), ("exec", "command"), ("forward", "tunnel")):
        denied = scope_refusal(op, only_files)
        assert denied is not None
        assert denied.code == "work_session_scope_not_allowed"
        assert repr(scope) in denied.detail
    assert scope_refusal("shell", None) is None  # unsigned development agent


def test_remote_forwarding_listens_on_the_loopback_only() -> None:
    tunnel = claims(["tunnel"])
    for host in ("", "localhost", "127.0.0.1", "::1"):
        assert remote_forward_refusal(host, 8080, uid=1000, claims=tunnel) is None, host
    assert [bind_host(h) for h in ("", "localhost", "127.0.0.1", "::1")] == [
        "localhost",
        "localhost",
        "127.0.0.1",
        "::1",
    ]
    assert remote_forward_refusal("localhost", 0, uid=1000, claims=tunnel) is None  # any port
    for host in ("0.0.0.0", "*", "::", "10.0.0.5", "example.org", "127.0.0.2", "x" * 5000):
        refused = remote_forward_refusal(host, 8080, uid=0, claims=tunnel)
        assert refused is not None, host
        assert refused.code == "remote_forward_not_loopback"
        assert len(refused.detail) < 400
    privileged = remote_forward_refusal("localhost", 80, uid=1000, claims=tunnel)
    assert privileged is not None
    assert privileged.code == "remote_forward_privileged_port"
    assert "below 1024" in privileged.detail
    assert remote_forward_refusal("localhost", 80, uid=0, claims=tunnel) is None  # root may
    assert remote_forward_refusal("localhost", 1024, uid=1000, claims=tunnel) is None
    no_port = remote_forward_refusal("localhost", 70000, uid=0, claims=tunnel)
    assert no_port is not None
    assert no_port.code == "remote_forward_bad_port"
    no_scope = remote_forward_refusal("localhost", 8080, uid=0, claims=claims(["websh"]))
    assert no_scope is not None
    assert no_scope.code == "work_session_scope_not_allowed"
    assert "'tunnel'" in no_scope.detail


def test_sftp_log_lines() -> None:
    line = 'close "/home/a/x y.bin" bytes read 0 written 10485760'
    assert parse_sftp_log(line) == ("/home/a/x y.bin", 0, 10485760)
    assert parse_sftp_log(f"sftp-server[42]: {line}") == ("/home/a/x y.bin", 0, 10485760)
    assert parse_sftp_log('open "/x" flags READ mode 0666') is None
    assert parse_sftp_log("") is None


def test_certificate_extensions_follow_the_scopes() -> None:
    assert certificate_extensions(["command", "webftp"]) == {
        "permit_pty": False,
        "permit_port_forwarding": False,
        "permit_agent_forwarding": False,
        "permit_x11_forwarding": False,
        "permit_user_rc": False,
    }
    both = certificate_extensions(("websh", "tunnel"))
    assert both["permit_pty"]
    assert both["permit_port_forwarding"]
    assert not both["permit_agent_forwarding"]


def _modules_after(code: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(done.stdout.split())


def test_asyncssh_is_loaded_only_when_an_ssh_channel_opens() -> None:
    """The agent's idle memory does not pay for the SSH server (nor its service, which
    the daemon registers lazily: tests/unit/agent/test_idle_imports.py)."""
    loaded = _modules_after("import fleetgate.agent.daemon")
    assert "fleetgate.agent.ssh.service" not in loaded
    assert "asyncssh" not in loaded


def test_ssh_proxy_imports_little() -> None:
    """ssh-proxy runs once per connection (Ansible: per task and host): no pydantic, httpx,
    asyncio or the full CLI on its path."""
    loaded = _modules_after(
        "import fleetgate.agentctl.entry, fleetgate.agentctl.sshproxy\n"
        "import websockets.sync.client"
    )
    assert not {"pydantic", "httpx", "asyncio", "rich", "fleetgate.agentctl.main"} & loaded


def _service(tmp_path: Path, **sections: object) -> SshService:
    raw: dict[str, object] = {
        "state_dir": str(tmp_path),
        "control_plane": {"url": "http://127.0.0.1:1"},
        "identity": {"server_id": str(SERVER), "key_file": str(tmp_path / "k")},
        **sections,
    }
    config = parse(raw)
    return SshService(config, TerminalManager(config))


def _open() -> ChannelOpen:
    return ChannelOpen(channel_id=uuid.uuid4(), spec=SshSpec(username="alice"))


def test_the_service_refuses_early_with_the_reason(tmp_path: Path) -> None:
    ca = "ssh-ed25519 " + base64.b64encode(b"k" * 51).decode()
    with pytest.raises(ChannelRefused) as refused:
        _service(tmp_path).check(_open())
    assert refused.value.code == "ssh_unavailable"
    assert "identity.ssh_ca_key" in refused.value.message
    identity = {"server_id": str(SERVER), "key_file": str(tmp_path / "k"), "ssh_ca_key": ca}
    with pytest.raises(ChannelRefused) as refused:
        _service(tmp_path, identity=identity, ssh={"enabled": False}).check(_open())
    assert refused.value.code == "ssh_disabled"
    service = _service(tmp_path, identity=identity)
    with pytest.raises(ChannelRefused, match="no SSH host key"):
        service.check(_open())
    ensure_host_key(tmp_path / "ssh_host_ed25519_key")
    service.check(_open())  # everything in place


def test_a_bad_ca_key_in_the_config_is_named(tmp_path: Path) -> None:
    identity = {"server_id": str(SERVER), "key_file": "k", "ssh_ca_key": "ssh-rsa AAAA"}
    with pytest.raises(ConfigError, match=r"identity\.ssh_ca_key"):
        _service(tmp_path, identity=identity)
