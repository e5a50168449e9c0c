"""Grants: what a gated command is allowed to do, signed by the control plane.

A grant travels in ``command.run`` as ``{"payload", "signature"}``: ``payload`` is the
base64url (no padding) of the claims' canonical JSON (UTF-8, keys sorted, no spaces) and
``signature`` the standard base64 of the Ed25519 signature of those exact bytes. The agent
verifies the bytes it received, then parses them, so the two sides never need to agree on
re-serialization. Pure: no I/O, no cryptography (see ``fleetgate.agent.policy.grants``).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError


__all__ = [
    "CONTENT_PATTERN",
    "GRANT_VERSION",
    "Grant",
    "GrantClaims",
    "b64url",
    "canonical_json",
    "decode_payload",
    "encode_payload",
    "parse_claims",
]

GRANT_VERSION = 2
"""The ``v`` of the claims this code writes and accepts (2: claims bind ``content``)."""

CONTENT_PATTERN = r"^[0-9a-f]{64}$"
"""What a ``content`` claim looks like: a lowercase hex SHA-256."""


class Grant(BaseModel):
    """The signed envelope carried by ``command.run``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    payload: str = Field(min_length=1, max_length=65_536)
    signature: str = Field(min_length=1, max_length=256)


class GrantClaims(BaseModel):
    """What the grant allows. Times are integer seconds since the epoch (UTC).

    ``auth`` is ``work_session`` (a login principal's command, bound to ``work_session``)
    or ``token`` (API or service token authentication, not gated by work sessions).
    ``expires_at`` is ``None`` only for token grants: they are bound to one command id,
    which the agent runs at most once. ``content`` is the digest of exactly what the
    operation does (``fleetgate.shared.protocol.content``): the agent recomputes it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    v: Literal[2] = 2
    command_id: UUID
    server_id: UUID
    auth: Literal["work_session", "token"]
    work_session: str | None = None
    assignee: str | None = None
    scopes: list[str] = Field(max_length=16)
    servers: list[UUID] = Field(max_length=1000)
    not_before: int
    expires_at: int | None = None
    sudo: list[str] = Field(default_factory=list, max_length=1000)
    content: str = Field(pattern=CONTENT_PATTERN)


def canonical_json(value: Any) -> bytes:
    """The canonical encoding that is signed: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode_payload(claims: GrantClaims) -> bytes:
    """The canonical bytes of ``claims`` (what the control plane signs)."""
    return canonical_json(claims.model_dump(mode="json"))


def b64url(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_payload(payload: str) -> bytes:
    """The bytes of a base64url payload.

    Raises:
        ValueError: not base64url.
    """
    try:
        return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"grant payload is not base64url: {exc}") from None


def parse_claims(data: bytes) -> GrantClaims:
    """Parse verified payload bytes.

    Raises:
        ValueError: not JSON, or not the claims model.
    """
    try:
        return GrantClaims.model_validate_json(data)
    except ValidationError as exc:
        raise ValueError(f"grant claims are invalid: {exc.errors()[0]['msg']}") from None
