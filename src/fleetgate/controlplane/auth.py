"""Authentication: header parsing and the principal (docs/security.md).

The parsers are pure functions; :func:`resolve_principal` looks the token up in the store.
Token ACLs are :mod:`fleetgate.controlplane.acl`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from fleetgate.controlplane.acl import SHELL_SYNTAX, TokenAcl, acl_allows
from fleetgate.controlplane.store import Database
from fleetgate.controlplane.store.users import TokenKind, TokenRow, UserRow, hash_key, lookup_token


__all__ = [
    "SHELL_SYNTAX",
    "Principal",
    "PrincipalCache",
    "acl_allows",
    "parse_agent_authorization",
    "parse_token_authorization",
    "resolve_principal",
]

_TOKEN_CHARS = r"[A-Za-z0-9_\-.~+/=]+"  # noqa: S105 - a character class, not a secret
_TOKEN_RE = re.compile(rf'^token\s*=\s*(?:"({_TOKEN_CHARS})"|({_TOKEN_CHARS}))$', re.IGNORECASE)
_SCHEME_RE = re.compile(rf"^(?:bearer|token)\s+({_TOKEN_CHARS})$", re.IGNORECASE)
_AGENT_PARAM_RE = re.compile(r'\s*([A-Za-z_]+)\s*=\s*(?:"([^"]*)"|([^\s,"]*))\s*(?:,|$)')


def parse_token_authorization(value: str | None) -> str | None:
    """The token of an ``Authorization`` header, or ``None``.

    Accepted: ``token="<key>"``, ``token=<key>``, ``Bearer <key>`` (and ``Token <key>``).
    """
    if not value:
        return None
    value = value.strip()
    match = _TOKEN_RE.match(value)
    if match:
        return match.group(1) or match.group(2)
    match = _SCHEME_RE.match(value)
    return match.group(1) if match else None


def parse_agent_authorization(value: str | None) -> tuple[str, str] | None:
    """``(server_id, key)`` from ``id="<uuid>", key="<key>"``, or ``None``."""
    if not value:
        return None
    params: dict[str, str] = {}
    pos = 0
    value = value.strip()
    while pos < len(value):
        match = _AGENT_PARAM_RE.match(value, pos)
        if match is None or match.end() == pos:
            return None
        name = match.group(1).lower()
        if name in params:
            return None
        params[name] = match.group(2) if match.group(2) is not None else match.group(3)
        pos = match.end()
    server_id, key = params.get("id"), params.get("key")
    if not server_id or not key or set(params) != {"id", "key"}:
        return None
    return server_id, key


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (api or login token) or a service (service token)."""

    token: TokenRow
    user: UserRow | None

    @property
    def kind(self) -> TokenKind:
        """The token kind: ``api``, ``service`` or ``login``."""
        return self.token.kind

    @property
    def auth_method(self) -> Literal["token", "service", "login"]:
        """``whoami``'s ``auth_method``."""
        return "token" if self.token.kind == "api" else self.token.kind

    @property
    def user_id(self) -> int | None:
        """The user id; ``None`` for a service."""
        return None if self.user is None else self.user.id

    @property
    def is_superuser(self) -> bool:
        """Superuser rights (services have them: they are created by the operator)."""
        return self.user is None or self.user.is_superuser

    @property
    def command_acl(self) -> tuple[str, ...] | None:
        """The token's command patterns (``None``: unrestricted or no ``command``)."""
        return self.token.command_acl

    @property
    def acl(self) -> TokenAcl | None:
        """The token's ACL (``None``: unrestricted)."""
        return self.token.acl

    @property
    def gated(self) -> bool:
        """Whether operations on servers need an active work session: every ``login``
        token, and API tokens a non-superuser made for themself."""
        return self.token.kind == "login" or (self.token.kind == "api" and self.token.gated)

    @property
    def identity_bound(self) -> bool:
        """Whether the principal acts on servers as the user's mapped account only
        (a gated non-superuser); others default to root as before."""
        return self.gated and not self.is_superuser

    @property
    def name(self) -> str | None:
        """The username, or the service's name."""
        return self.token.service_name if self.user is None else self.user.username


class PrincipalCache:
    """Recently authenticated tokens, by the SHA-256 of their key, for ``ttl`` seconds.

    Saves a database round trip per request. Deleting a token clears the cache, so a
    deleted token stops working at once; expiry is checked on every hit.
    """

    def __init__(self, ttl: float = 30.0, max_entries: int = 10_000) -> None:
        self.ttl_us = int(ttl * 1_000_000)
        self.max_entries = max_entries
        self._entries: dict[str, tuple[int, Principal]] = {}

    def get(self, digest: str, now: int) -> Principal | None:
        """The cached principal, if fresh and its token unexpired."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        cached_at, principal = entry
        expires_at = principal.token.expires_at
        if now - cached_at > self.ttl_us or (expires_at is not None and expires_at <= now):
            del self._entries[digest]
            return None
        return principal

    def put(self, digest: str, principal: Principal, now: int) -> None:
        """Remember a principal (the whole cache is dropped when it is full)."""
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[digest] = (now, principal)

    def clear(self) -> None:
        """Forget everything (a token was deleted)."""
        self._entries.clear()


async def resolve_principal(
    db: Database, header: str | None, *, now: int, cache: PrincipalCache | None = None
) -> Principal | None:
    """The principal of an ``Authorization`` header, or ``None`` when it is not valid."""
    key = parse_token_authorization(header)
    if key is None:
        return None
    digest = hash_key(key)
    if cache is not None:
        cached = cache.get(digest, now)
        if cached is not None:
            return cached
    found = await db.read(lookup_token, key, now=now)
    if found is None:
        return None
    token, user = found
    principal = Principal(token=token, user=user)
    if cache is not None:
        cache.put(digest, principal, now)
    return principal
