"""The control plane's Ed25519 signing key and the grants it signs for agents.

The key is generated at first start into ``<database file>.signing-key`` (PEM, PKCS#8,
mode 0600, beside the database) and never logged; agents pin its public half, which the
registration response returns as ``signing_public_key``. Grant format: ``docs/protocol.md``.
"""

from __future__ import annotations

import base64
import stat
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import sqlalchemy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetgate.controlplane.auth import Principal
from fleetgate.controlplane.store.worksession_gate import gate_and_record
from fleetgate.controlplane.store.worksessions import WorkSessionRow
from fleetgate.controlplane.worksession.gate import GateDenial
from fleetgate.shared.atomic import atomic_write
from fleetgate.shared.protocol.grants import Grant, GrantClaims, b64url, encode_payload


__all__ = ["GrantSigner", "key_path", "load_or_create_key", "operation_claims"]


def key_path(db_path: Path | str) -> Path | None:
    """Where the signing key of the database at ``db_path`` lives (``None``: in memory)."""
    if str(db_path) == ":memory:":
        return None
    path = Path(db_path)
    return path.with_name(path.name + ".signing-key")


def load_or_create_key(path: Path | None) -> Ed25519PrivateKey:
    """Load the signing key, or create it (0600, exclusively) when it does not exist.

    Raises:
        RuntimeError: the file is readable by group or others, or is not an Ed25519 key.
    """
    if path is None:
        return Ed25519PrivateKey.generate()
    if path.exists():
        return _load(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        atomic_write(path, pem, 0o600, exclusive=True)
    except FileExistsError:
        return _load(path)  # another process created it first: use theirs
    return key


def _load(path: Path) -> Ed25519PrivateKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise RuntimeError(f"{path} is accessible by group or others (mode {mode:o}); make it 0600")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if isinstance(key, Ed25519PrivateKey):
        return key
    raise RuntimeError(f"{path} does not hold an Ed25519 private key")


class GrantSigner:
    """Signs grants with the control plane's key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key_b64 = base64.b64encode(raw).decode("ascii")
        """The public key as agents pin it: standard base64 of the 32 raw bytes."""

    def __repr__(self) -> str:  # never show the private key, even by accident
        return f"GrantSigner(public_key={self.public_key_b64!r})"

    def sign(self, claims: GrantClaims) -> Grant:
        """The signed envelope of ``claims``."""
        return self.sign_payload(encode_payload(claims))

    def sign_payload(self, payload: bytes) -> Grant:
        """The signed envelope of claims already encoded (``encode_payload``)."""
        signature = self._key.sign(payload)
        return Grant(payload=b64url(payload), signature=base64.b64encode(signature).decode())


def operation_claims(
    *,
    operation_id: str,
    scope: str,
    server_id: str,
    now_us: int,
    principal_name: str | None,
    session: WorkSessionRow | None,
    content: str,
) -> GrantClaims:
    """The claims of an operation (a command, or a channel: terminal, transfer, tunnel
    stream): bound to its session (login) or to a token's authority over ``scope``, and
    to ``content``, the digest of what it does (``fleetgate.shared.protocol.content``).

    Times are whole seconds, rounded outwards so the window is never narrower than the
    session's.
    """
    if session is None:
        return GrantClaims(
            command_id=UUID(operation_id),
            server_id=UUID(server_id),
            auth="token",
            assignee=principal_name,
            scopes=[scope],
            servers=[UUID(server_id)],
            not_before=now_us // 1_000_000,
            content=content,
        )
    return GrantClaims(
        command_id=UUID(operation_id),
        server_id=UUID(server_id),
        auth="work_session",
        work_session=session.id,
        assignee=session.assigned_name,
        scopes=list(session.scopes),
        servers=[UUID(s) for s in session.server_ids],
        not_before=session.starts_at // 1_000_000,
        expires_at=-(-session.expires_at // 1_000_000),
        sudo=[c for policy in session.sudo_policies for c in policy.get("commands", [])],
        content=content,
    )


@dataclass(frozen=True)
class SignedOperation:
    """An operation the gate allowed: its grant, and the work session it belongs to."""

    grant: Grant
    session: WorkSessionRow | None


def gate_and_sign(
    conn: sqlalchemy.Connection,
    principal: Principal,
    signer: GrantSigner,
    *,
    work_session: str | None,
    server_id: str,
    server_name: str,
    scope: str,
    operation_id: str,
    description: str,
    content: str,
    now: int,
) -> SignedOperation | GateDenial:
    """Gate an operation inside the caller's transaction, then sign its grant.

    ``content`` is the digest of exactly what the operation does
    (:func:`fleetgate.shared.protocol.content.content_digest`); the grant binds it.

    Gated principals (a login, a non-superuser's own API token) need the work session
    ``work_session`` (a denial is recorded on its timeline, with ``description``);
    ungated tokens (a superuser's, a service's) carry just ``scope`` in their grant.
    Recording the allowed operation is the caller's: a command
    links its row, a channel describes itself.
    """
    session = None
    if principal.gated:
        denial, session = gate_and_record(
            conn,
            work_session,
            user_id=principal.user_id,
            server_id=server_id,
            server_name=server_name,
            scope=scope,
            line=description,
            now=now,
        )
        if denial is not None:
            return denial
    user = principal.user
    claims = operation_claims(
        operation_id=operation_id,
        scope=scope,
        server_id=server_id,
        now_us=now,
        principal_name=principal.token.service_name if user is None else user.username,
        session=session,
        content=content,
    )
    return SignedOperation(signer.sign(claims), session)
