"""Users and their tokens.

Passwords are hashed with scrypt and a per-user salt; token keys are random, prefixed by
their kind, and stored as SHA-256 digests only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import uuid
from dataclasses import dataclass
from typing import Literal

from fleetgate.controlplane.acl import TokenAcl


__all__ = [
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
    def from_row(cls, row: sqlite3.Row, prefix: str = "") -> UserRow:
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
    def from_row(cls, row: sqlite3.Row) -> TokenRow:
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
    conn: sqlite3.Connection,
    username: str,
    *,
    email: str = "",
    password_hash: str | None = None,
    is_superuser: bool = False,
    server_username: str | None = None,
    now: int,
) -> UserRow | None:
    """Insert a user; ``None`` when the username is taken."""
    try:
        cur = conn.execute(
            "INSERT INTO users (username, email, password_hash, is_superuser, server_username, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
            (username, email, password_hash, int(is_superuser), server_username, now),
        )
    except sqlite3.IntegrityError:
        return None
    return UserRow.from_row(cur.fetchone())


def set_server_username(
    conn: sqlite3.Connection, user_id: int, server_username: str | None
) -> UserRow | None:
    """Map (or unmap, with ``None``) a user's server account; the updated user."""
    cur = conn.execute(
        "UPDATE users SET server_username = ? WHERE id = ? RETURNING *", (server_username, user_id)
    )
    row = cur.fetchone()
    return None if row is None else UserRow.from_row(row)


def set_password(conn: sqlite3.Connection, user_id: int, password_hash: str) -> None:
    """Replace a user's password hash (from :func:`hash_password`)."""
    conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))


def get_user(conn: sqlite3.Connection, user_id: int) -> UserRow | None:
    """The user with this id."""
    row = conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
    return None if row is None else UserRow.from_row(row)


def get_user_by_username(
    conn: sqlite3.Connection, username: str
) -> tuple[UserRow, str | None] | None:
    """The user and its password hash, for login and the CLI."""
    row = conn.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
    return None if row is None else (UserRow.from_row(row), row["password_hash"])


def find_user(conn: sqlite3.Connection, ref: int | str) -> UserRow | None:
    """The user an API names: an id (an int, or a string of digits that is nobody's
    username) or a username."""
    if isinstance(ref, int):
        return get_user(conn, ref)
    found = get_user_by_username(conn, ref)
    if found is None and ref.isdigit():
        return get_user(conn, int(ref))
    return None if found is None else found[0]


def set_active(conn: sqlite3.Connection, user_id: int, active: bool) -> UserRow | None:
    """Enable or disable a user; the user after the change, ``None`` if unknown."""
    row = conn.execute(
        "UPDATE users SET is_active = ? WHERE id = ? RETURNING *", (int(active), user_id)
    ).fetchone()
    return None if row is None else UserRow.from_row(row)


def list_users(conn: sqlite3.Connection) -> list[UserRow]:
    """Every user, by id."""
    return [UserRow.from_row(r) for r in conn.execute("SELECT * FROM users ORDER BY id")]


# -- tokens ----------------------------------------------------------------------------


def create_token(
    conn: sqlite3.Connection,
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
    cur = conn.execute(
        "INSERT INTO tokens (id, key_hash, kind, name, user_id, service_name, command_acl, "
        "created_at, expires_at, gated, acl) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "RETURNING *",
        (
            str(uuid.uuid4()),
            hash_key(key),
            kind,
            name,
            user_id,
            service_name,
            None if command_acl is None else json.dumps(command_acl),
            now,
            expires_at,
            int(gated or kind == "login"),
            None if acl is None else acl.model_dump_json(exclude_defaults=True),
        ),
    )
    return TokenRow.from_row(cur.fetchone()), key


def lookup_token(
    conn: sqlite3.Connection, key: str, *, now: int
) -> tuple[TokenRow, UserRow | None] | None:
    """The unexpired token whose key is ``key``, with its user (``None`` for a service)."""
    digest = hash_key(key)
    row = conn.execute(
        "SELECT t.*, u.id AS u_id, u.username AS u_username, u.email AS u_email, "
        "u.password_hash AS u_password_hash, u.is_superuser AS u_is_superuser, "
        "u.created_at AS u_created_at, u.server_username AS u_server_username, "
        "u.is_active AS u_is_active "
        "FROM tokens t LEFT JOIN users u ON u.id = t.user_id WHERE t.key_hash = ?",
        (digest,),
    ).fetchone()
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
    conn: sqlite3.Connection, *, user_id: int | None, service_name: str | None = None
) -> list[TokenRow]:
    """The tokens of a user (or of a service), oldest first."""
    if user_id is not None:
        rows = conn.execute(
            "SELECT * FROM tokens WHERE user_id = ? ORDER BY created_at, id", (user_id,)
        )
    else:
        rows = conn.execute(
            "SELECT * FROM tokens WHERE user_id IS NULL AND service_name = ? "
            "ORDER BY created_at, id",
            (service_name,),
        )
    return [TokenRow.from_row(r) for r in rows]


def delete_token(conn: sqlite3.Connection, token_id: str, *, user_id: int) -> bool:
    """Delete a token of ``user_id``; whether it existed."""
    cur = conn.execute("DELETE FROM tokens WHERE id = ? AND user_id = ?", (token_id, user_id))
    return cur.rowcount > 0
