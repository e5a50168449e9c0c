"""Verification of grants (``fleetgate.shared.protocol.grants``), pure: no I/O.

A command runs only if its grant is signed by the pinned control-plane key, names this
command and this server, includes the operation's scope, binds exactly the content the
agent received (``fleetgate.shared.protocol.content``), and ``now`` is inside its time
window (with a clock-skew allowance). A refusal carries the same ``work_session_*`` code
the control plane would have given, so operators see one vocabulary.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING
from uuid import UUID

from fleetgate.agent.config import AgentConfig
from fleetgate.shared.protocol.grants import Grant, GrantClaims, decode_payload, parse_claims


if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


__all__ = [
    "VERIFIED_MEMO",
    "GrantPolicy",
    "GrantRefused",
    "PublicKey",
    "load_public_key",
    "verify_grant",
]

VERIFIED_MEMO = 64
"""Verified signatures remembered (each a grant's payload, a few hundred bytes)."""


class GrantRefused(Exception):
    """The operation is refused; ``code`` is a ``work_session_*`` code, or another
    refusal of local enforcement (``env_not_allowed``)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class PublicKey:
    """An Ed25519 public key, held as its 32 raw bytes until the first verification.

    The agent pins its key at start but verifies only when a gated operation arrives:
    ``cryptography`` (about 9 MB resident) loads then, not with an idle daemon. Loading
    the key checks nothing more than its length, which the constructor does.
    """

    __slots__ = ("_key", "_verified", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
        self.raw = raw
        self._key: Ed25519PublicKey | None = None
        self._verified: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()
        """Recent ``(signature, data)`` pairs that verified, newest last (a tunnel's grant
        comes again with each of its streams)."""

    def verify(self, signature: bytes, data: bytes) -> None:
        """Return if ``signature`` is this key's over ``data``: at once when these exact
        bytes verified recently (verification is a pure function of them).

        Raises:
            cryptography.exceptions.InvalidSignature: it is not.
        """
        pair = (signature, data)
        if pair in self._verified:
            self._verified.move_to_end(pair)
            return
        if self._key is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            self._key = Ed25519PublicKey.from_public_bytes(self.raw)
        self._key.verify(signature, data)
        self._verified[pair] = None
        if len(self._verified) > VERIFIED_MEMO:
            self._verified.popitem(last=False)


def load_public_key(text: str) -> PublicKey:
    """An Ed25519 public key from standard base64 of its 32 raw bytes.

    Raises:
        ValueError: not base64, or not 32 bytes.
    """
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    return PublicKey(raw)


def _signed_claims(grant: Grant, key: PublicKey) -> GrantClaims:
    return _verified_claims(grant.payload, grant.signature, key)


@functools.lru_cache(maxsize=VERIFIED_MEMO)
def _verified_claims(payload: str, signature: str, key: PublicKey) -> GrantClaims:
    """The claims of a grant signed by ``key``: remembered for these exact strings (a pure
    function of them; a refusal is raised, never remembered), as a tunnel's grant comes
    again with each of its streams and parsing it is most of a stream's grant check.
    The claims are immutable: every check of them still runs for each operation."""
    from cryptography.exceptions import InvalidSignature  # loaded by key.verify anyway

    try:
        data = decode_payload(payload)
        raw_signature = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise GrantRefused("work_session_not_usable", "the grant is not well formed") from None
    try:
        key.verify(raw_signature, data)
    except InvalidSignature:
        raise GrantRefused(
            "work_session_not_usable", "the grant is not signed by the control plane"
        ) from None
    try:
        return parse_claims(data)
    except ValueError as exc:
        raise GrantRefused("work_session_not_usable", str(exc)) from None


def verify_grant(
    grant: Grant | None,
    *,
    key: PublicKey,
    command_id: UUID | tuple[UUID, ...],
    server_id: UUID,
    scope: str | tuple[str, ...],
    now: float,
    skew: float,
    content: str,
) -> GrantClaims:
    """The claims of a valid grant for this command, else :class:`GrantRefused`.

    Order: presence, signature (nothing unsigned is trusted), command (a tuple: any one
    of them, as a tunnel stream's grant may name the stream or its tunnel), server, time
    window (``not_before - skew <= now <= expires_at + skew``), scope (a tuple: any one of
    them, as for an ``ssh`` channel whose requests are checked one by one later), content
    (the digest the agent computed from what it received; ``grant_content_mismatch``).
    """
    if grant is None:
        raise GrantRefused("work_session_required", "the command carries no grant")
    claims = _signed_claims(grant, key)
    ids = (command_id,) if isinstance(command_id, UUID) else command_id
    if claims.command_id not in ids:
        raise GrantRefused("work_session_not_usable", "the grant was issued for another command")
    if claims.server_id != server_id or server_id not in claims.servers:
        raise GrantRefused("work_session_server_not_allowed", "the grant is for another server")
    if now < claims.not_before - skew:
        raise GrantRefused("work_session_not_active", "the grant is not valid yet")
    if claims.expires_at is not None and now > claims.expires_at + skew:
        raise GrantRefused("work_session_expired", "the grant has expired")
    wanted = (scope,) if isinstance(scope, str) else scope
    if not any(s in claims.scopes for s in wanted):
        names = " or ".join(repr(s) for s in wanted)
        raise GrantRefused("work_session_scope_not_allowed", f"the grant has no {names} scope")
    if claims.content != content:
        raise GrantRefused(
            "grant_content_mismatch",
            "the operation is not the one the grant was issued for (changed in transit)",
        )
    return claims


@dataclass(frozen=True)
class GrantPolicy:
    """The agent's grant settings: the pinned key (``None``: not configured)."""

    server_id: UUID
    key: PublicKey | None
    allow_unsigned: bool = False
    skew: float = 60.0

    @classmethod
    def from_config(cls, config: AgentConfig) -> GrantPolicy:
        """The policy of an agent configuration (the key was validated when loaded)."""
        text = config.identity.control_plane_key
        return cls(
            server_id=config.identity.server_id,
            key=None if text is None else load_public_key(text),
            allow_unsigned=config.grants.allow_unsigned,
            skew=config.grants.clock_skew,
        )

    @property
    def warning(self) -> str | None:
        """What an operator must know at start about this policy, if anything."""
        if self.allow_unsigned:
            return "grants.allow_unsigned is on: commands without a grant run (development only)"
        if self.key is None:
            return "identity.control_plane_key is not set: every command will be refused"
        return None

    def check(
        self,
        grant: Grant | None,
        *,
        command_id: UUID | tuple[UUID, ...],
        scope: str | tuple[str, ...],
        now: float,
        content: str,
    ) -> GrantClaims | None:
        """The verified claims of the operation, or :class:`GrantRefused`.

        ``command_id`` is the operation's id (a command's, or a channel's; a tuple: the ids
        a channel's grant may name, ``grant_subjects``); ``content`` the
        digest of what was received (``fleetgate.shared.protocol.content_digest``). With
        ``allow_unsigned`` (development only) an operation without a grant goes ahead
        with no claims (``None``); a grant that is present is still verified when a key
        is pinned.
        """
        if grant is None and self.allow_unsigned:
            return None
        if self.key is None:
            if self.allow_unsigned:
                return None
            raise GrantRefused(
                "work_session_not_usable",
                "no control-plane key is pinned (identity.control_plane_key); "
                "gated operations are refused",
            )
        return verify_grant(
            grant,
            key=self.key,
            command_id=command_id,
            server_id=self.server_id,
            scope=scope,
            now=now,
            skew=self.skew,
            content=content,
        )
