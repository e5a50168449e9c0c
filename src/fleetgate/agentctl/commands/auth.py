"""`login`, `logout`, `whoami`."""

from __future__ import annotations

import argparse
import getpass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fleetgate.agentctl import config as cfg
from fleetgate.agentctl.context import Context
from fleetgate.agentctl.errors import EXIT_OK, AgentctlError, CliError, UsageError
from fleetgate.agentctl.output import yes_no
from fleetgate.agentctl.worksessions import source_label


if TYPE_CHECKING:
    from fleetgate.agentctl.commands import SubParsers

WHOAMI = "/api/auth/whoami/"
SESSIONS = "/api/work-sessions/sessions/"
LOGIN = "/api/auth/login/"


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    """Add `login`, `logout` and `whoami`."""
    login = subparsers.add_parser(
        "login",
        parents=[common],
        help="store the URL and a token of a control plane",
        description=(
            "Validate a token with GET /api/auth/whoami/ and store it, or log in with a "
            "username (password read from stdin, or prompted on a terminal)."
        ),
    )
    login.add_argument("url", metavar="URL", help="control plane URL, e.g. https://cp.example")
    how = login.add_mutually_exclusive_group(required=True)
    how.add_argument("--token", help="an API or service token")
    how.add_argument("--token-stdin", action="store_true", help="read the token from stdin")
    how.add_argument("--username", help="log in with a username and password")
    login.add_argument("--ca-file", help="CA bundle that signs the control plane's certificate")
    login.add_argument(
        "--insecure", action="store_true", help="do not verify the TLS certificate (unsafe)"
    )
    login.set_defaults(handler=run_login)

    logout = subparsers.add_parser(
        "logout",
        parents=[common],
        help="remove the stored token",
        description="Remove the stored token (the URL is kept).",
    )
    logout.set_defaults(handler=run_logout)

    whoami = subparsers.add_parser(
        "whoami",
        parents=[common],
        help="show who the stored token authenticates",
        description="Show the user, superuser flag, auth method, whether work sessions "
        "are required, and which work session gated commands would use and why (the "
        "--work-session flag, $AGENTCTL_WORK_SESSION, or `work-session use`).",
    )
    whoami.add_argument(
        "--work-session",
        metavar="ID",
        help="show this session as the active one, as a gated command's flag would",
    )
    whoami.set_defaults(handler=run_whoami)


def _read_secret(ctx: Context, prompt: str) -> str:
    """One line from stdin, or a no-echo prompt when stdin is a terminal."""
    if ctx.stdin.isatty():
        return getpass.getpass(prompt)
    return ctx.stdin.readline().rstrip("\r\n")


def run_login(ctx: Context, args: argparse.Namespace) -> int:
    """Validate the credentials against the control plane, then save them."""
    try:
        url = cfg.normalize_url(args.url)
    except ValueError as exc:
        raise UsageError(f"URL: {exc}") from None
    ctx.operation = "login"
    file_config = cfg.load_file(ctx.config_path)
    verify_tls = False if args.insecure else file_config.verify_tls
    ca_file = args.ca_file if args.ca_file is not None else file_config.ca_file
    # Talk to the new URL with the TLS settings being saved, not with the old config.
    ctx.config = cfg.parse_config(
        {"url": url, "verify_tls": verify_tls, **({"ca_file": ca_file} if ca_file else {})},
        "(login)",
    )
    if args.username:
        password = _read_secret(ctx, f"Password for {args.username}: ")
        answer = ctx.client(url=url).post(LOGIN, {"username": args.username, "password": password})
        token = str(answer["token"])
    else:
        token = args.token if args.token is not None else _read_secret(ctx, "Token: ").strip()
        if not token:
            raise UsageError("the token is empty")
    me = ctx.client(url=url, token=token).get(WHOAMI)
    settings: dict[str, Any] = {"url": url, "token": token, "verify_tls": verify_tls}
    if ca_file:
        settings["ca_file"] = ca_file
    cfg.save(ctx.config_path, cfg.parse_config(settings, "(login)"))
    if ctx.out.json:
        ctx.out.document(
            {
                "url": url,
                "username": me.get("username"),
                "auth_method": me.get("auth_method"),
                "config": str(ctx.config_path),
            }
        )
    else:
        ctx.out.info(
            f"Logged in to {url} as {me.get('username')} "
            f"({me.get('auth_method')}); saved to {ctx.config_path}"
        )
    return EXIT_OK


def run_logout(ctx: Context, args: argparse.Namespace) -> int:
    """Drop the token from the config file; say so if the environment still provides one."""
    file_config = cfg.load_file(ctx.config_path)
    if file_config.token is not None:
        cfg.save(ctx.config_path, cfg.without_token(file_config))
        message = f"Logged out: removed the token from {ctx.config_path}"
    else:
        message = f"No token stored in {ctx.config_path}"
    if ctx.env.get(cfg.ENV_TOKEN):
        message += f" ({cfg.ENV_TOKEN} is still set in the environment)"
    if ctx.out.json:
        ctx.out.document(
            {"logged_out": file_config.token is not None, "config": str(ctx.config_path)}
        )
    else:
        ctx.out.info(message)
    return EXIT_OK


def _acl_summary(acl: object) -> str:
    """What a token's ACL allows, by key (``restricted: nothing`` when it names nothing)."""
    if not isinstance(acl, dict):
        return ""
    named = sorted(k for k, v in acl.items() if v not in (None, False, [], ()))
    return "restricted: " + (", ".join(named) or "nothing")


def whoami_rows(me: dict[str, Any]) -> list[tuple[str, str]]:
    """The rows `whoami` prints in table mode (empty values skipped)."""
    required = me.get("work_session_required")
    active = me.get("active_work_session")
    if isinstance(active, dict):
        chosen = f"{active['id']} (from {source_label(str(active['source']))})"
        if active.get("status") not in (None, "active"):
            chosen += f"; it is {active['status']}"
        if active.get("used") is False:
            chosen += "; not used: tokens are not gated"
    else:
        chosen = "none" if required else ""
    rows = [
        ("User", str(me.get("username") or "")),
        ("Email", str(me.get("email") or "")),
        ("Superuser", yes_no(me.get("is_superuser"))),
        ("Auth", str(me.get("auth_method") or "")),
        (
            "WS required",
            "yes (run `agentctl work-session ls`)" if required else yes_no(required),
        ),
        ("Work session", chosen),
        ("Server user", str(me.get("server_username") or "")),
        ("ACL", _acl_summary(me.get("acl"))),
    ]
    return [(k, v) for k, v in rows if v]


def _status_of(ctx: Context, session_id: str) -> str | None:
    """The session's status (None when it cannot be read: unknown id, not visible)."""
    try:
        session = ctx.client().get(f"{SESSIONS}{quote(session_id, safe='')}/")
    except AgentctlError:
        return None
    return str(session.get("status")) if isinstance(session, dict) else None


def run_whoami(ctx: Context, args: argparse.Namespace) -> int:
    """Print the identity behind the stored token."""
    ctx.operation = "whoami"
    me = ctx.client().get(WHOAMI)
    if not isinstance(me, dict):
        raise CliError("unexpected answer to whoami")
    session_id, source = ctx.work_session_choice(args.work_session)
    me["active_work_session"] = (
        None
        if session_id is None
        else {
            "id": session_id,
            "source": source,
            "status": _status_of(ctx, session_id),
            "used": bool(me.get("gated", me.get("work_session_required", True))),
        }
    )
    if ctx.out.json:
        ctx.out.document(me)
        return EXIT_OK
    rows = whoami_rows(me)
    width = max(len(k) for k, _ in rows)
    ctx.out.data("".join(f"{k + ':':<{width + 1}}  {v}\n" for k, v in rows))
    return EXIT_OK
