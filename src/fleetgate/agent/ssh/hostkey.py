"""The agent's SSH host key: one Ed25519 key, made once, kept 0600 in the state directory.

Generated with ``cryptography`` (not asyncssh). The agent sends its public half in every
``hello``; it reads it from the key file's unencrypted public section (OpenSSH's
``PROTOCOL.key`` format), so a start does not load ``cryptography`` (about 9 MB
resident) nor asyncssh: both load with the first ``ssh`` channel, which loads the key.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from fleetgate.agent.errors import ConfigError


if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


__all__ = ["ensure_host_key", "new_host_key", "public_line", "public_line_of", "write_host_key"]

_ARMOR_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----"
_ARMOR_END = b"-----END OPENSSH PRIVATE KEY-----"
_MAGIC = b"openssh-key-v1\0"
_ED25519 = b"ssh-ed25519"


def ensure_host_key(path: Path) -> str:
    """The host key's public line (``ssh-ed25519 AAAA...``); the key is created (0600,
    exclusively, in a 0700 directory) when it does not exist yet.

    Raises:
        ConfigError: the file is readable by group or others, or is not an unencrypted
            OpenSSH Ed25519 key.
    """
    if path.exists():
        return _load(path)
    data, public = new_host_key()
    try:
        write_host_key(path, data)
    except FileExistsError:
        return _load(path)  # made meanwhile by another process
    return public


def new_host_key() -> tuple[bytes, str]:
    """A new key, not yet written: its private file content and its public line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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


def _load(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{path} is accessible by group or others (mode {mode:o}); make it 0600")
    try:
        return public_line_of(path.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"{path} is not an OpenSSH Ed25519 private key: {exc}") from None


def public_line(key: Ed25519PrivateKey) -> str:
    """The OpenSSH one-line public key of ``key``."""
    from cryptography.hazmat.primitives import serialization

    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )


def public_line_of(data: bytes) -> str:
    """The public line of an unencrypted OpenSSH Ed25519 private key file (pure).

    Checks the structure, not the curve arithmetic (asyncssh loads the key, in full,
    for the first ``ssh`` channel): the armor, one unencrypted key, of type
    ``ssh-ed25519``, whose private section repeats the same public key.

    Raises:
        ValueError: anything else (what is wrong, without key material).
    """
    blob = _unarmor(data)
    reader = _Reader(blob[len(_MAGIC) :])
    cipher, kdf, _options = reader.string(), reader.string(), reader.string()
    if cipher != b"none" or kdf != b"none":
        raise ValueError("the key is encrypted (a host key must not be)")
    if reader.uint32() != 1:
        raise ValueError("the file must hold exactly one key")
    public = reader.string()
    private = _Reader(reader.string())
    key = _Reader(public)
    if key.string() != _ED25519:
        raise ValueError("not an Ed25519 key")
    point = key.string()
    if len(point) != 32 or not key.done():
        raise ValueError("malformed Ed25519 public key")
    if private.uint32() != private.uint32():
        raise ValueError("corrupt private section (check words differ)")
    if private.string() != _ED25519 or private.string() != point:
        raise ValueError("the private section does not match the public key")
    secret = private.string()
    if len(secret) != 64 or secret[32:] != point:
        raise ValueError("malformed Ed25519 private key")
    return f"{_ED25519.decode()} {base64.b64encode(public).decode('ascii')}"


def _unarmor(data: bytes) -> bytes:
    text = data.strip()
    if not (text.startswith(_ARMOR_BEGIN) and text.endswith(_ARMOR_END)):
        raise ValueError("no OPENSSH PRIVATE KEY armor")
    try:
        body = b"".join(text[len(_ARMOR_BEGIN) : -len(_ARMOR_END)].split())
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the armored content is not base64") from None
    if not blob.startswith(_MAGIC):
        raise ValueError("not an openssh-key-v1 key")
    return blob


class _Reader:
    """SSH wire encoding (RFC 4251): big-endian uint32, length-prefixed strings."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def uint32(self) -> int:
        end = self._at + 4
        if end > len(self._data):
            raise ValueError("truncated key file")
        value = int.from_bytes(self._data[self._at : end], "big")
        self._at = end
        return value

    def string(self) -> bytes:
        size = self.uint32()
        end = self._at + size
        if end > len(self._data):
            raise ValueError("truncated key file")
        value = self._data[self._at : end]
        self._at = end
        return value

    def done(self) -> bool:
        return self._at == len(self._data)
