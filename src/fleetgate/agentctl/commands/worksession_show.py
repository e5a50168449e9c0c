"""The read side of `work-session`: `ls`, `describe`, `current`, `timeline`, `recording`,
and which session a verb means (its ID, else the one selected for this shell)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from fleetgate.agentctl.context import Context
from fleetgate.agentctl.errors import EXIT_OK, CliError, UsageError
from fleetgate.agentctl.output import format_timestamp, truncate
from fleetgate.agentctl.recordings import parse_cast, play
from fleetgate.agentctl.worksessions import describe_rows, server_names, timeline_rows


SESSIONS = "/api/work-sessions/sessions/"
WHOAMI = "/api/auth/whoami/"
OPEN = ("pending", "approved", "active")
"""What `ls` shows by default: the sessions still to come or in use."""
LS_HEADERS = ("", "ID", "STATUS", "SERVERS", "SCOPES", "ASSIGNEE", "EXPIRES", "PURPOSE")


def current_session(ctx: Context) -> str | None:
    """The session gated commands attach to (environment, then `use`)."""
    return ctx.selected_work_session()


def target_session(ctx: Context, args: argparse.Namespace) -> str:
    """The session a verb acts on: its ID argument, else the current one."""
    session_id = args.id or current_session(ctx)
    if not session_id:
        raise UsageError("no session id given and no active session (see `work-session use`)")
    return str(session_id)


def session_path(session_id: str, action: str = "") -> str:
    return f"{SESSIONS}{quote(session_id, safe='')}/" + (f"{action}/" if action else "")


def run_ls(ctx: Context, args: argparse.Namespace) -> int:
    """List sessions (default: mine that are pending, approved or active); `*` marks the
    selected one."""
    ctx.operation = "work-session"
    client = ctx.client()
    if args.status is None:
        me = client.get(WHOAMI)
        my_id = me.get("id") if isinstance(me, dict) else None
        sessions = [
            s
            for s in client.list_all(SESSIONS)
            if s.get("status") in OPEN and (my_id is None or my_id in _people(s))
        ]
    else:
        params = {} if args.status == "all" else {"status": args.status}
        sessions = client.list_all(SESSIONS, params)
    if ctx.out.json:
        ctx.out.document(sessions)
        return EXIT_OK
    active = current_session(ctx)
    rows = [
        [
            "*" if s.get("id") == active else "",
            str(s.get("id")),
            str(s.get("status")),
            server_names(s),
            ",".join(s.get("scopes") or []),
            str((s.get("assigned_user") or {}).get("name", "")),
            format_timestamp(s.get("expires_at")),
            truncate(" ".join(str(s.get("description") or "").split()), 40),
        ]
        for s in sessions
    ]
    ctx.out.table(LS_HEADERS, rows)
    return EXIT_OK


def _people(session: Mapping[str, Any]) -> tuple[Any, Any]:
    """The user ids a session belongs to: its assignee and its requester."""
    return (
        (session.get("assigned_user") or {}).get("id"),
        (session.get("created_by") or {}).get("id"),
    )


def run_describe(ctx: Context, args: argparse.Namespace) -> int:
    """Show one session."""
    ctx.operation = "work-session"
    return _show(ctx, ctx.client().get(session_path(target_session(ctx, args))))


def run_current(ctx: Context, args: argparse.Namespace) -> int:
    """Show the session gated commands attach to (`null` in JSON when none)."""
    ctx.operation = "work-session"
    session_id = current_session(ctx)
    if session_id is None:
        if ctx.out.json:
            ctx.out.document(None)
        else:
            ctx.out.info("no active work session; see `agentctl work-session ls`")
        return EXIT_OK
    return _show(ctx, ctx.client().get(session_path(session_id)))


def _show(ctx: Context, session: dict[str, Any]) -> int:
    """Print one session: the JSON document, or a FIELD/VALUE table."""
    if ctx.out.json:
        ctx.out.document(session)
    else:
        ctx.out.table(("FIELD", "VALUE"), describe_rows(session))
    return EXIT_OK


def run_timeline(ctx: Context, args: argparse.Namespace) -> int:
    """Everything done in the session, oldest first."""
    ctx.operation = "work-session"
    items = ctx.client().list_all(session_path(target_session(ctx, args), "timeline"))
    if ctx.out.json:
        ctx.out.document(items)
    else:
        ctx.out.table(("TIME", "TYPE", "ACTOR", "DETAIL"), timeline_rows(items))
    return EXIT_OK


TERMINALS = "/api/websh/terminals/"


def run_recording(ctx: Context, args: argparse.Namespace) -> int:
    """Play back (or print with --raw) the recordings of a session's terminals, oldest first."""
    ctx.operation = "work-session"
    client = ctx.client()
    if args.terminal:
        terminals = [client.get(f"{TERMINALS}{quote(args.terminal, safe='')}/")]
    else:
        session_id = target_session(ctx, args)
        found = client.list_all(TERMINALS, {"work_session": session_id})
        terminals = sorted(found, key=lambda t: str(t.get("created_at")))
    recorded = [t for t in terminals if t.get("recording")]
    if not recorded:
        raise CliError("no recording found (recordings arrive when a terminal has ended)")
    if ctx.out.json:
        # One document for scripts: each terminal with its recording's header and events.
        documents = []
        for terminal in recorded:
            header, events = parse_cast(client.download(str(terminal["recording"]["url"])))
            documents.append({**terminal, "cast": {"header": header, "events": list(events)}})
        ctx.out.document(documents)
        return EXIT_OK
    for terminal in recorded:
        data = client.download(str(terminal["recording"]["url"]))
        if args.raw:
            ctx.out.data(data.decode("utf-8", "replace"))
        else:
            play(data, ctx.out.data, speed=args.speed, max_idle=args.max_idle)
    return EXIT_OK
