"""The agent's SSH host key: one Ed25519 key, made once, kept 0600 in the state directory.

Generated with ``cryptography`` (not asyncssh: the agent reads its public half at every
start, for ``hello``, without importing the SSH server).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetgate.agent.errors import ConfigError


__all__ = ["ensure_host_key", "new_host_key", "public_line", "write_host_key"]


def ensure_host_key(path: Path) -> str:
    """The host key's public line (``ssh-ed25519 AAAA...``); the key is created (0600,
    exclusively, in a 0700 directory) when it does not exist yet.

    Raises:
        ConfigError: the file is readable by group or others, or is not an Ed25519 key.
    """
    if path.exists():
        return public_line(_load(path))
    data, public = new_host_key()
    try:
        write_host_key(path, data)
    except FileExistsError:
        return public_line(_load(path))  # made meanwhile by another process
    return public


def new_host_key() -> tuple[bytes, str]:
    """A new key, not yet written: its private file content and its public line."""
    key = Ed25519PrivateKey.generate()
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return data, public_line(key)


def write_host_key(path: Path, data: bytes) -> None:
    """Write a key made by :func:`new_host_key` (0600, exclusively, in a 0700 directory).

    Raises:
        FileExistsError: there is one already (it is never replaced).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _load(path: Path) -> Ed25519PrivateKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{path} is accessible by group or others (mode {mode:o}); make it 0600")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise ConfigError(f"{path} is not an OpenSSH private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} does not hold an Ed25519 key")
    return key


def public_line(key: Ed25519PrivateKey) -> str:
    """The OpenSSH one-line public key of ``key``."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )
