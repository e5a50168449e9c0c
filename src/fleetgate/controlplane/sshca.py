"""The control plane as an SSH certificate authority for work sessions.

The CA key (Ed25519, OpenSSH format, mode 0600) is generated at first start into
``<database file>.ssh-ca-key`` beside the grant key, and never logged; agents pin its public
half, which registration returns as ``ssh_ca_public_key``. A certificate is issued for a
key the client holds: principal = the login user, valid until the work session's end,
key id binding it to one server and one work session
(``fleetgate.shared.protocol.ssh.format_key_id``), extensions from the session's scopes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetgate.shared.protocol.ssh import certificate_extensions, format_key_id


__all__ = ["CertificateRequest", "SshAuthority", "ca_key_path", "load_or_create_ca"]

BACKDATE = 60
"""Seconds a certificate is valid before it was issued (clock skew between machines)."""


def ca_key_path(db_path: Path | str) -> Path | None:
    """Where the CA key of the database at ``db_path`` lives (``None``: in memory)."""
    if str(db_path) == ":memory:":
        return None
    path = Path(db_path)
    return path.with_name(path.name + ".ssh-ca-key")


def load_or_create_ca(path: Path | None) -> bytes:
    """The CA private key (OpenSSH format), created (0600, exclusively) when missing.

    Raises:
        RuntimeError: the file is readable by group or others.
    """
    if path is not None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise RuntimeError(
                    f"{path} is accessible by group or others (mode {mode:o}); make it 0600"
                ) from None
            return path.read_bytes()
    data = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    if path is not None:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return data


@dataclass(frozen=True)
class CertificateRequest:
    """What one certificate is for."""

    public_key: str
    user: str
    server_id: str
    work_session: str | None
    scopes: tuple[str, ...]
    valid_after: int
    valid_before: int


class SshAuthority:
    """Issues OpenSSH user certificates with the CA key."""

    def __init__(self, private_key: bytes) -> None:
        self._key = asyncssh.import_private_key(private_key)
        self.public_key = self._key.export_public_key("openssh").decode("ascii").split()[:2]
        self.public_line = " ".join(self.public_key)
        """The CA's public key as agents pin it (``ssh-ed25519 AAAA...``)."""

    def __repr__(self) -> str:  # never show the private key, even by accident
        return f"SshAuthority(public_key={self.public_line!r})"

    def issue(self, request: CertificateRequest) -> str:
        """The certificate (OpenSSH one-line form) for ``request``.

        Raises:
            ValueError: the public key cannot be read.
        """
        try:
            user_key = asyncssh.import_public_key(request.public_key)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise ValueError(f"not an OpenSSH public key: {exc}") from None
        allowed = certificate_extensions(request.scopes)
        cert = self._key.generate_user_certificate(
            user_key,
            format_key_id(request.server_id, request.work_session, request.user),
            principals=[request.user],
            valid_after=max(0, request.valid_after - BACKDATE),
            valid_before=request.valid_before,
            permit_pty=allowed["permit_pty"],
            permit_port_forwarding=allowed["permit_port_forwarding"],
            permit_agent_forwarding=allowed["permit_agent_forwarding"],
            permit_x11_forwarding=allowed["permit_x11_forwarding"],
            permit_user_rc=allowed["permit_user_rc"],
        )
        return cert.export_certificate("openssh").decode("ascii").strip()
