"""The control plane's SSH certificate authority: its key file and the certificates it
issues (read back with asyncssh, as the agent does)."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from fleetgate.controlplane.sshca import CertificateRequest, SshAuthority, load_or_create_ca
from fleetgate.shared.protocol.ssh import parse_key_id


def test_the_ca_key_is_made_once_0600(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3.ssh-ca-key"
    first = load_or_create_ca(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_ca(path) == first
    os.chmod(path, 0o640)
    with pytest.raises(RuntimeError, match="make it 0600"):
        load_or_create_ca(path)
    assert "PRIVATE" not in repr(SshAuthority(first))


def extensions(certificate: str, tmp_path: Path) -> list[str]:
    """The extensions OpenSSH's own ssh-keygen reads in ``certificate``."""
    path = tmp_path / "cert.pub"
    path.write_text(certificate + "\n", encoding="utf-8")
    shown = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(path)], capture_output=True, text=True, check=True
    ).stdout
    block = shown.split("Extensions:", 1)[1].strip().splitlines()
    return [line.strip() for line in block if line.strip() and line.strip() != "(none)"]


def test_a_certificate_binds_user_server_session_and_scopes(tmp_path: Path) -> None:
    ca = SshAuthority(load_or_create_ca(None))
    client = asyncssh.generate_private_key("ssh-ed25519")
    server = str(uuid.uuid4())
    text = ca.issue(
        CertificateRequest(
            public_key=client.export_public_key().decode(),
            user="alice",
            server_id=server,
            work_session="ws-9",
            scopes=("command", "webftp"),
            valid_after=1_800_000_000,
            valid_before=1_800_003_600,
        )
    )
    cert: Any = asyncssh.import_certificate(text)
    assert cert.principals == ["alice"]
    assert cert.signing_key.public_data == asyncssh.import_public_key(ca.public_line).public_data
    binding = parse_key_id(cert._key_id)
    assert binding is not None
    assert (str(binding.server_id), binding.work_session, binding.user) == (server, "ws-9", "alice")
    assert cert._valid_before == 1_800_003_600
    assert cert._valid_after == 1_800_000_000 - 60  # backdated for clock skew
    # No pty, no port forwarding (neither websh nor tunnel), never agent or X11 forwarding.
    assert extensions(text, tmp_path) == []
    wider = ca.issue(
        CertificateRequest(
            client.export_public_key().decode(), "alice", server, "ws-9", ("websh", "tunnel"), 0, 1
        )
    )
    assert sorted(extensions(wider, tmp_path)) == ["permit-port-forwarding", "permit-pty"]


def test_a_bad_public_key_is_a_clear_error() -> None:
    ca = SshAuthority(load_or_create_ca(None))
    request = CertificateRequest("ssh-ed25519 nonsense", "a", str(uuid.uuid4()), None, (), 0, 1)
    with pytest.raises(ValueError, match="not an OpenSSH public key"):
        ca.issue(request)
