"""The SSH host key's public line, read from the key file without cryptography (pure),
and the refusals of files that are not an unencrypted OpenSSH Ed25519 key."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from fleetgate.agent.errors import ConfigError
from fleetgate.agent.ssh.hostkey import ensure_host_key, new_host_key, public_line_of


BEGIN, END = b"-----BEGIN OPENSSH PRIVATE KEY-----", b"-----END OPENSSH PRIVATE KEY-----"


def _openssh(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def _ssh_keygen(path: Path, *args: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-f", str(path), *args], check=True, timeout=30)
    return path


def _blob(data: bytes) -> bytes:
    return base64.b64decode(b"".join(data.strip()[len(BEGIN) : -len(END)].split()))


def _armor(blob: bytes) -> bytes:
    return BEGIN + b"\n" + base64.b64encode(blob) + b"\n" + END + b"\n"


def test_the_public_line_is_the_one_cryptography_computes() -> None:
    for _ in range(20):
        key = Ed25519PrivateKey.generate()
        expected = (
            key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        assert public_line_of(_openssh(key)) == expected
    data, public = new_host_key()
    assert public_line_of(data) == public


def test_a_key_made_by_ssh_keygen_reads_too(tmp_path: Path) -> None:
    """Operators may bring their own key (``[ssh] host_key_file``), with a comment."""
    path = _ssh_keygen(tmp_path / "key", "-t", "ed25519", "-N", "", "-C", "root@host")
    expected = " ".join(path.with_suffix(".pub").read_text().split()[:2])
    assert public_line_of(path.read_bytes()) == expected
    assert ensure_host_key(path) == expected


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "armor"),
        (b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA", "armor"),
        (BEGIN + b"\n%%%%\n" + END, "base64"),
        (_armor(b"not-openssh-key-v1"), "openssh-key-v1"),
        (_openssh(generate_private_key(public_exponent=65537, key_size=1024)), "Ed25519"),
    ],
)
def test_what_is_not_an_unencrypted_ed25519_key_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        public_line_of(data)


def test_an_encrypted_key_is_refused(tmp_path: Path) -> None:
    """The daemon starts unattended: a host key behind a passphrase cannot be used."""
    path = _ssh_keygen(tmp_path / "key", "-t", "ed25519", "-N", "passphrase")
    with pytest.raises(ValueError, match="encrypted"):
        public_line_of(path.read_bytes())


def test_a_truncated_or_tampered_key_is_refused() -> None:
    blob = _blob(_openssh(Ed25519PrivateKey.generate()))
    for size in (20, 40, 60, 100, len(blob) - 80):
        with pytest.raises(ValueError):
            public_line_of(_armor(blob[:size]))
    # Another key's public half in front of this private half: they must agree.
    other = _blob(_openssh(Ed25519PrivateKey.generate()))
    swapped = other[: len(other) // 2] + blob[len(blob) // 2 :]
    with pytest.raises(ValueError):
        public_line_of(_armor(swapped))
    # The two check words of the private section differ (a corrupt or wrongly decrypted key).
    at = blob.index(b"\x00\x00\x00\x0bssh-ed25519", 60) - 8
    corrupt = blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :]
    with pytest.raises(ValueError, match="check words"):
        public_line_of(_armor(corrupt))


def test_a_host_key_file_that_is_not_a_key_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "ssh_host_ed25519_key"
    path.write_bytes(b"garbage\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="not an OpenSSH Ed25519 private key: no OPENSSH"):
        ensure_host_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="accessible by group or others"):
        ensure_host_key(path)
