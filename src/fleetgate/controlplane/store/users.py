"""Users and their tokens.

Passwords are hashed with scrypt and a per-user salt; token keys are random, prefixed by
their kind, and stored as SHA-256 digests only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Connection, RowMapping, delete, select, update

from fleetgate.controlplane.acl import TokenAcl
from fleetgate.controlplane.store import tables as t
from fleetgate.controlplane.store.sql import insert_ignore


__all__ = [
    "MAX_ID",
    "TOKEN_PREFIXES",
    "TokenKind",
    "TokenRow",
    "UserRow",
    "create_token",
    "create_user",
    "delete_token",
    "find_user",
    "get_user",
    "get_user_by_username",
    "hash_key",
    "hash_password",
    "list_tokens",
    "list_users",
    "lookup_token",
    "new_key",
    "set_active",
    "set_password",
    "set_server_username",
    "verify_password",
]

TokenKind = Literal["api", "service", "login"]

TOKEN_PREFIXES: dict[TokenKind, str] = {"api": "fat_", "service": "fst_", "login": "flt_"}

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


@dataclass(frozen=True)
class UserRow:
    """One user."""

    id: int
    username: str
    email: str
    is_superuser: bool
    has_password: bool
    created_at: int
    server_username: str | None = None
    """The account this user's commands, terminals and transfers run as on servers."""
    is_active: bool = True
    """False: disabled by a superuser; its tokens do not authenticate."""

    @classmethod
    def from_row(cls, row: RowMapping, prefix: str = "") -> UserRow:
        """Build from a ``users`` row (columns named ``prefix + name``)."""
        return cls(
            id=int(row[prefix + "id"]),
            username=str(row[prefix + "username"]),
            email=str(row[prefix + "email"]),
            is_superuser=bool(row[prefix + "is_superuser"]),
            has_password=row[prefix + "password_hash"] is not None,
            created_at=int(row[prefix + "created_at"]),
            server_username=row[prefix + "server_username"],
            is_active=bool(row[prefix + "is_active"]),
        )


@dataclass(frozen=True)
class TokenRow:
    """One token (without its key, which is never stored)."""

    id: str
    kind: TokenKind
    name: str
    user_id: int | None
    service_name: str | None
    command_acl: tuple[str, ...] | None
    created_at: int
    expires_at: int | None
    gated: bool = False
    """Needs a work session like a login (tokens a non-superuser made for themself)."""
    acl: TokenAcl | None = None
    """What a restricted token may do (``None``: unrestricted)."""

    @classmethod
    def from_row(cls, row: RowMapping) -> TokenRow:
        """Build from a ``tokens`` row."""
        acl = row["command_acl"]
        ops = row["acl"]
        kind: TokenKind = row["kind"]
        return cls(
            id=str(row["id"]),
            kind=kind,
            name=str(row["name"]),
            user_id=None if row["user_id"] is None else int(row["user_id"]),
            service_name=row["service_name"],
            command_acl=None if acl is None else tuple(json.loads(acl)),
            created_at=int(row["created_at"]),
            expires_at=row["expires_at"],
            gated=bool(row["gated"]),
            acl=None if ops is None else TokenAcl.model_validate_json(ops),
        )


# -- secrets ---------------------------------------------------------------------------


def hash_key(key: str) -> str:
    """SHA-256 hex digest of a token or server key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(prefix: str) -> str:
    """A fresh random key: ``prefix`` + 32 random bytes, URL-safe base64."""
    return prefix + secrets.token_urlsafe(32)


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` for ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches a :func:`hash_password` string (constant time)."""
    if not stored:
        return False
    try:
        scheme, n, r, p, salt_hex, digest_hex = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode("utf-8"),
            salt=bytes.fromhex(salt_hex),
            n=int(n),
            r=int(r),
            p=int(p),
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest.hex(), digest_hex)


# -- users -----------------------------------------------------------------------------


def create_user(
    conn: Connection,
    username: str,
    *,
    email: str = "",
    password_hash: str | None = None,
    is_superuser: bool = False,
    server_username: str | None = None,
    now: int,
) -> UserRow | None:
    """Insert a user; ``None`` when the username is taken."""
    row = (
        conn.execute(
            insert_ignore(conn, t.users)
            .values(
                username=username,
                email=email,
                password_hash=password_hash,
                is_superuser=int(is_superuser),
                server_username=server_username,
                created_at=now,
            )
            .returning(*t.users.c)
        )
        .mappings()
        .first()
    )
    return None if row is None else UserRow.from_row(row)


def set_server_username(
    conn: Connection, user_id: int, server_username: str | None
) -> UserRow | None:
    """Map (or unmap, with ``None``) a user's server account; the updated user."""
    stmt = (
        update(t.users)
        .where(t.users.c.id == user_id)
        .values(server_username=server_username)
        .returning(*t.users.c)
    )
    row = conn.execute(stmt).mappings().first()
    return None if row is None else UserRow.from_row(row)


def set_password(conn: Connection, user_id: int, password_hash: str) -> None:
    """Replace a user's password hash (from :func:`hash_password`)."""
    conn.execute(update(t.users).where(t.users.c.id == user_id).values(password_hash=password_hash))


MAX_ID = 2**63 - 1
"""The largest id a row can have (a 64-bit integer in SQLite and PostgreSQL alike)."""


def get_user(conn: Connection, user_id: int) -> UserRow | None:
    """The user with this id (None for an id no row can have: the database would refuse
    the number itself)."""
    if not 0 < user_id <= MAX_ID:
        return None
    row = conn.execute(select(t.users).where(t.users.c.id == user_id)).mappings().first()
    return None if row is None else UserRow.from_row(row)


def get_user_by_username(conn: Connection, username: str) -> tuple[UserRow, str | None] | None:
    """The user and its password hash, for login and the CLI."""
    row = conn.execute(select(t.users).where(t.users.c.username == username)).mappings().first()
    return None if row is None else (UserRow.from_row(row), row["password_hash"])


def find_user(conn: Connection, ref: int | str) -> UserRow | None:
    """The user an API names: an id (an int, or a string of digits that is nobody's
    username) or a username."""
    if isinstance(ref, int):
        return get_user(conn, ref)
    found = get_user_by_username(conn, ref)
    if found is None and ref.isascii() and ref.isdigit() and len(ref) <= 19:
        return get_user(conn, int(ref))  # ("²" is a digit int() refuses; 19: MAX_ID's)
    return None if found is None else found[0]


def set_active(conn: Connection, user_id: int, active: bool) -> UserRow | None:
    """Enable or disable a user; the user after the change, ``None`` if unknown."""
    stmt = (
        update(t.users)
        .where(t.users.c.id == user_id)
        .values(is_active=int(active))
        .returning(*t.users.c)
    )
    row = conn.execute(stmt).mappings().first()
    return None if row is None else UserRow.from_row(row)


def list_users(conn: Connection) -> list[UserRow]:
    """Every user, by id."""
    rows = conn.execute(select(t.users).order_by(t.users.c.id)).mappings()
    return [UserRow.from_row(r) for r in rows]


# -- tokens ----------------------------------------------------------------------------


def create_token(
    conn: Connection,
    *,
    kind: TokenKind,
    name: str,
    user_id: int | None,
    service_name: str | None = None,
    command_acl: list[str] | None = None,
    acl: TokenAcl | None = None,
    gated: bool = False,
    expires_at: int | None = None,
    now: int,
) -> tuple[TokenRow, str]:
    """Create a token; return it and its key (the only time the key exists in clear).

    ``command_acl`` alone is the older form of ``acl={"command": command_acl}``.
    """
    if acl is None and command_acl is not None:
        acl = TokenAcl(command=tuple(command_acl))
    if acl is not None and acl.command is not None:
        command_acl = list(acl.command)
    key = new_key(TOKEN_PREFIXES[kind])
    stmt = (
        t.tokens.insert()
        .values(
            id=str(uuid.uuid4()),
            key_hash=hash_key(key),
            kind=kind,
            name=name,
            user_id=user_id,
            service_name=service_name,
            command_acl=None if command_acl is None else json.dumps(command_acl),
            created_at=now,
            expires_at=expires_at,
            gated=int(gated or kind == "login"),
            acl=None if acl is None else acl.model_dump_json(exclude_defaults=True),
        )
        .returning(*t.tokens.c)
    )
    return TokenRow.from_row(conn.execute(stmt).mappings().one()), key


def lookup_token(conn: Connection, key: str, *, now: int) -> tuple[TokenRow, UserRow | None] | None:
    """The unexpired token whose key is ``key``, with its user (``None`` for a service)."""
    digest = hash_key(key)
    stmt = (
        select(t.tokens, *(c.label("u_" + c.name) for c in t.users.c))
        .select_from(t.tokens.outerjoin(t.users, t.users.c.id == t.tokens.c.user_id))
        .where(t.tokens.c.key_hash == digest)
    )
    row = conn.execute(stmt).mappings().first()
    if row is None or not hmac.compare_digest(str(row["key_hash"]), digest):
        return None
    token = TokenRow.from_row(row)
    if token.expires_at is not None and token.expires_at <= now:
        return None
    user = None
    if row["u_id"] is not None:
        if not row["u_is_active"]:
            return None  # a disabled user's tokens do not authenticate
        user = UserRow.from_row(row, prefix="u_")
    elif token.kind != "service":
        return None
    return token, user


def list_tokens(
    conn: Connection, *, user_id: int | None, service_name: str | None = None
) -> list[TokenRow]:
    """The tokens of a user (or of a service), oldest first."""
    tok = t.tokens.c
    stmt = select(t.tokens).order_by(tok.created_at, tok.id)
    if user_id is not None:
        stmt = stmt.where(tok.user_id == user_id)
    else:
        stmt = stmt.where(tok.user_id.is_(None), tok.service_name == service_name)
    return [TokenRow.from_row(r) for r in conn.execute(stmt).mappings()]


def delete_token(conn: Connection, token_id: str, *, user_id: int) -> bool:
    """Delete a token of ``user_id``; whether it existed."""
    stmt = delete(t.tokens).where(t.tokens.c.id == token_id, t.tokens.c.user_id == user_id)
    return conn.execute(stmt).rowcount > 0
