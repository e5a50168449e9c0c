"""The ``controlplane`` commands that work on the database directly, without a running
control plane: create, enable and disable users, create tokens, migrate the schema."""

from __future__ import annotations

import argparse
import getpass
import re
import sys

from fleetgate.controlplane.cli_common import err, out, settings_from_args, write_secret
from fleetgate.controlplane.store import (
    connect,
    open_engine,
    transaction,
    users as users_store,
)
from fleetgate.controlplane.store.engine import safe_url
from fleetgate.controlplane.store.migrate import current_revision
from fleetgate.controlplane.timeutil import now_us
from fleetgate.shared import logs


__all__ = ["cmd_db_upgrade", "cmd_token_create", "cmd_user_active", "cmd_user_create"]

SERVER_USERNAME_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
"""A Linux account name (as ``POST /api/iam/users/`` accepts it)."""


def cmd_user_create(args: argparse.Namespace) -> int:
    """Create a user directly in the database."""
    settings = settings_from_args(args)
    mapped = args.server_username
    if mapped is not None and (mapped == "root" or not SERVER_USERNAME_RE.match(mapped)):
        err(f"error: --server-username {mapped!r} is not a Linux account name other than root")
        return 2
    password_hash = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            err("error: empty password on stdin")
            return 2
        password_hash = users_store.hash_password(password)
    elif args.password_prompt:
        password_hash = users_store.hash_password(getpass.getpass("Password: "))
    conn = connect(settings.database)
    try:
        with transaction(conn):
            user = users_store.create_user(
                conn,
                args.username,
                email=args.email or "",
                password_hash=password_hash,
                is_superuser=args.superuser,
                server_username=mapped,
                now=now_us(),
            )
    finally:
        conn.close()
    if user is None:
        err(f"error: user {args.username!r} already exists")
        return 1
    kind = "superuser" if user.is_superuser else "user"
    out(f"created {kind} {user.username} (id {user.id})")
    return 0


def cmd_user_active(args: argparse.Namespace) -> int:
    """Enable or disable a user directly in the database.

    A disabled user's tokens stop authenticating (a running control plane notices within
    its principal cache's 30 s); ``PATCH /api/iam/users/<id>/`` also ends at once what the
    user has open.
    """
    settings = settings_from_args(args)
    active = args.action == "enable"
    conn = connect(settings.database)
    try:
        with transaction(conn):
            found = users_store.get_user_by_username(conn, args.username)
            user = None if found is None else users_store.set_active(conn, found[0].id, active)
    finally:
        conn.close()
    if user is None:
        err(f"error: no user {args.username!r}")
        return 1
    out(f"{'enabled' if active else 'disabled'} user {user.username} (id {user.id})")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    """Create an API token for a user, or a service token."""
    settings = settings_from_args(args)
    conn = connect(settings.database)
    try:
        with transaction(conn):
            if args.user is not None:
                found = users_store.get_user_by_username(conn, args.user)
                if found is None:
                    err(f"error: no user {args.user!r}")
                    return 1
                user_id: int | None = found[0].id
                kind: users_store.TokenKind = "api"
            else:
                user_id, kind = None, "service"
            token, key = users_store.create_token(
                conn,
                kind=kind,
                name=args.name or (args.service or "cli"),
                user_id=user_id,
                service_name=args.service,
                command_acl=args.acl,
                now=now_us(),
            )
    finally:
        conn.close()
    if args.file is not None:
        write_secret(args.file, key + "\n")
        out(f"{kind} token {token.id} written to {args.file}")
    else:
        out(key)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Migrate the database to this control plane's schema (``serve`` does it too)."""
    settings = settings_from_args(args)
    logs.configure(settings.log_level, settings.log_format)
    engine = open_engine(settings.database, migrate=False)
    try:
        before = current_revision(engine)
        engine.dispose()
        engine = open_engine(settings.database)
        after = current_revision(engine)
    finally:
        engine.dispose()
    out(f"{safe_url(settings.database)}: revision {before or 'none'} -> {after}")
    return 0
