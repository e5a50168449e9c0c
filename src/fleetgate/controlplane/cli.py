"""``controlplane``: serve, bootstrap users and tokens, and the ``dev`` environment.

Secrets (tokens, server keys, passwords) are printed only when the operator asked for
them on stdout (``token create`` without ``--file``); never logged.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from fleetgate.controlplane.cli_admin import (
    cmd_db_upgrade,
    cmd_token_create,
    cmd_user_active,
    cmd_user_create,
)
from fleetgate.controlplane.cli_common import SettingsError, err, settings_from_args
from fleetgate.controlplane.store import StoreError, open_engine
from fleetgate.shared import logs


__all__ = ["main"]

# -- serve -----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the control plane until SIGTERM/SIGINT."""
    from fleetgate.controlplane.app import create_app
    from fleetgate.controlplane.server import (
        ControlPlaneServer,
        bind_socket,
        raise_open_files_limit,
        run_on_uvloop,
        write_port_file,
    )
    from fleetgate.controlplane.tls import TlsSetupError, check_tls_files

    settings = settings_from_args(args)
    logs.configure(settings.log_level, settings.log_format)
    if settings.tls_cert is not None and settings.tls_key is not None:
        try:
            check_tls_files(settings.tls_cert, settings.tls_key)
        except TlsSetupError as exc:
            err(f"error: {exc}")
            return 2
    try:
        # Reachable, the login accepted, the schema migrated: or one line and exit 78.
        open_engine(settings.database).dispose()
    except StoreError as exc:
        err(f"error: {exc}")
        return 78
    raise_open_files_limit()  # one socket per connected agent
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:
        err(f"error: cannot listen on {settings.host}:{settings.port}: {exc.strerror}")
        return 1
    port = int(sock.getsockname()[1])
    port_file: Path | None = args.port_file
    settings = settings.model_copy(update={"port": port})  # the real one, for port 0

    def started() -> None:
        if port_file is not None:
            write_port_file(port_file, port)
        scheme = "https" if settings.tls else "http"
        err(f"controlplane listening on {scheme}://{settings.host}:{port}")

    server = ControlPlaneServer(create_app(settings), settings, on_started=started)
    try:
        run_on_uvloop(server.serve(sockets=[sock]))
    finally:
        sock.close()
    return 0


# -- argument parsing ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``controlplane`` argument parser."""
    parser = argparse.ArgumentParser(prog="fleetgate-controlplane", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the control plane")
    _database_flags(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000; 0: any free port)")
    serve.add_argument("--port-file", type=Path, help="write the real port here once listening")
    serve.add_argument(
        "--tls-cert",
        type=Path,
        help="serve https:// and wss:// with this PEM certificate chain (env CONTROLPLANE_TLS_CERT)",
    )
    serve.add_argument(
        "--tls-key",
        type=Path,
        help="the certificate's PEM private key, mode 0600 (env CONTROLPLANE_TLS_KEY)",
    )
    serve.set_defaults(func=cmd_serve)

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    user_create = user.add_parser("create", help="create a user")
    user_create.add_argument("username")
    user_create.add_argument("--superuser", action="store_true")
    user_create.add_argument("--email", default="")
    user_create.add_argument(
        "--server-username",
        help="the account this user's commands, terminals and transfers run as on servers",
    )
    pw = user_create.add_mutually_exclusive_group()
    pw.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    pw.add_argument("--password-prompt", action="store_true", help="prompt for the password")
    _database_flags(user_create)
    user_create.set_defaults(func=cmd_user_create)
    for action, words in (
        ("disable", "disable a user: their tokens stop working"),
        ("enable", "enable a disabled user again"),
    ):
        toggle = user.add_parser(action, help=words)
        toggle.add_argument("username")
        _database_flags(toggle)
        toggle.set_defaults(func=cmd_user_active)

    token = sub.add_parser("token", help="manage tokens").add_subparsers(
        dest="action", required=True
    )
    token_create = token.add_parser("create", help="create an API or service token")
    owner = token_create.add_mutually_exclusive_group(required=True)
    owner.add_argument("--user", help="an API token of this user")
    owner.add_argument("--service", help="a service token with this name")
    token_create.add_argument("--name", help="the token's name")
    token_create.add_argument("--acl", action="append", help="allowed command pattern (repeatable)")
    token_create.add_argument("--file", type=Path, help="write the key here (0600)")
    _database_flags(token_create)
    token_create.set_defaults(func=cmd_token_create)

    db = sub.add_parser("db", help="the database").add_subparsers(dest="action", required=True)
    db_upgrade = db.add_parser("upgrade", help="migrate the database to this version's schema")
    _database_flags(db_upgrade)
    db_upgrade.set_defaults(func=cmd_db_upgrade)

    dev = sub.add_parser("dev", help="control plane + local agent for development")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--dir", type=Path, default=Path(".dev"))
    dev.set_defaults(func=_cmd_dev)
    return parser


def _database_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, help="SQLite database file (env CONTROLPLANE_DB_PATH)")
    parser.add_argument(
        "--database-url",
        help="sqlite:///path or postgresql+psycopg://user:password@host/db, instead of --db "
        "(env CONTROLPLANE_DATABASE_URL)",
    )


def _cmd_dev(args: argparse.Namespace) -> int:
    from fleetgate.controlplane.dev import run_dev

    return run_dev(args.dir, host=args.host, port=args.port)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``controlplane`` and ``python -m fleetgate.controlplane``."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        err(f"error: {exc}")
        return 2
    except StoreError as exc:  # unreachable, login refused, schema newer: one line
        err(f"error: {exc}")
        return 78
    except KeyboardInterrupt:
        return 130
