"""`work-session` (alias `session`): request, inspect and manage work sessions.

`create --wait` waits on the control plane's long-poll (`GET <id>/?status=&wait=`), so it
returns as soon as the session is approved, without a polling schedule.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fleetgate.agentctl.client import Client
from fleetgate.agentctl.commands.worksession_show import (
    SESSIONS,
    WHOAMI,
    current_session,
    run_current,
    run_describe,
    run_ls,
    run_recording,
    run_timeline,
    session_path,
    target_session,
)
from fleetgate.agentctl.context import Context
from fleetgate.agentctl.errors import (
    EXIT_APPROVAL_PENDING,
    EXIT_OK,
    EXIT_WORK_SESSION_ENDED,
    CliError,
    ControlPlaneError,
)
from fleetgate.agentctl.worksessions import (
    create_body,
    save_active,
    state_path,
    sudo_policies,
)


if TYPE_CHECKING:
    from fleetgate.agentctl.commands import SubParsers

ENDED = frozenset({"completed", "expired", "revoked", "rejected", "cancelled"})
CLEAR_WORDS = frozenset({"clear", "none", "unset"})
"""`use clear` forgets the selection, as `use --unset` does."""
DEFAULT_WAIT = 300.0
LONG_POLL = 25  # seconds per request, below the client's 30 s read timeout


def _wait_timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return seconds


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    """Add `work-session` and its verbs."""
    group = subparsers.add_parser(
        "work-session",
        aliases=["session"],
        parents=[common],
        help="request and manage work sessions",
        description="Create, inspect and manage work sessions: approval-gated units of work "
        "that authorize access to servers.",
    )
    verbs = group.add_subparsers(dest="ws_command", metavar="COMMAND", required=True)

    def verb(name: str, help_: str, handler: Any, *, session: bool = True) -> Any:
        parser = verbs.add_parser(name, parents=[common], help=help_, description=help_ + ".")
        if session:
            parser.add_argument("id", nargs="?", metavar="ID", help="session id (default: current)")
        parser.set_defaults(handler=handler, ws_verb=name)
        return parser

    create = verb("create", "Create a new work session", run_create, session=False)
    create.add_argument("--purpose", help="why you need access (Markdown, required)")
    create.add_argument("--scope", action="append", help="scopes, comma-separated or repeated")
    create.add_argument("--server", action="append", help="server names, comma-separated")
    when = create.add_mutually_exclusive_group()
    when.add_argument("--expires-in", metavar="DURATION", help="1h, 2h, 4h, 90m, ...")
    when.add_argument("--expires-at", metavar="TIME", help="absolute end (ISO 8601 / RFC 3339)")
    create.add_argument("--starts-at", metavar="TIME", help="scheduled start (default: now)")
    create.add_argument("--assignee", help="assign to this user (superusers only)")
    create.add_argument(
        "--requester-type", choices=("user", "agent"), default="user", help="user or agent"
    )
    create.add_argument("--sudo", action="append", help="sudo patterns (one policy per flag)")
    create.add_argument("--sudo-reason", help="reason recorded on the sudo policies")
    create.add_argument("--wait", action="store_true", help="wait until approved")
    create.add_argument(
        "--wait-timeout", type=_wait_timeout, default=DEFAULT_WAIT, metavar="SECONDS"
    )
    create.add_argument("--use", action="store_true", help="select it for this shell")

    ls = verb("ls", "List work sessions", run_ls, session=False)
    ls.add_argument(
        "--status",
        default=None,
        help="only this status (pending, approved, active, ...; `all`: every session you "
        "can see); default: yours that are pending, approved or active",
    )
    verb("describe", "Show details of a work session", run_describe)
    use = verb("use", "Select the work session of this shell, or clear it", run_use, session=False)
    use.add_argument(
        "id",
        nargs="?",
        metavar="ID",
        help="session to select; `clear` forgets the selection; none: show the current one",
    )
    use.add_argument("--unset", action="store_true", help="forget the selection (= `use clear`)")
    verb("current", "Show the active work session", run_current, session=False)
    for name, help_ in (
        ("approve", "Approve a pending session (superuser only)"),
        ("reject", "Reject a pending session (superuser only)"),
        ("activate", "Activate an approved session"),
        ("complete", "Mark an active session as completed"),
        ("revoke", "Force-terminate a session (superuser only)"),
        ("cancel", "Cancel a pending session"),
    ):
        verb(name, help_, run_action)
    extend = verb("extend", "Extend a session's expiry", run_extend)
    until = extend.add_mutually_exclusive_group(required=True)
    until.add_argument("--expires-in", metavar="DURATION", help="added to the current end")
    until.add_argument("--expires-at", metavar="TIME", help="the new end")
    update = verb("update", "Add sudo command patterns to a session", run_update)
    update.add_argument("--sudo", action="append", required=True, help="sudo patterns")
    update.add_argument("--sudo-reason", help="reason recorded on the new policies")
    verb("timeline", "Show a session's activity timeline", run_timeline)
    recording = verb("recording", "Play back a session's terminal recordings", run_recording)
    recording.add_argument("--terminal", metavar="ID", help="only this terminal's recording")
    recording.add_argument("--raw", action="store_true", help="print the asciicast v2 file")
    recording.add_argument("--speed", type=_wait_timeout, default=1.0, help="playback speed")
    recording.add_argument(
        "--max-idle", type=_wait_timeout, default=1.0, metavar="SECONDS", help="longest pause"
    )


# -- helpers ----------------------------------------------------------------------------


def _success(ctx: Context, operation: str, message: str, session: Mapping[str, Any] | None) -> int:
    if ctx.out.json:
        doc: dict[str, Any] = {
            "ok": True,
            "operation": operation,
            "message": message,
            "active_worksession": current_session(ctx),
        }
        if session is not None:
            doc.update(
                work_session_id=session.get("id"),
                status=session.get("status"),
                expires_at=session.get("expires_at"),
                work_session=dict(session),
            )
        ctx.out.document(doc)
    else:
        ctx.out.data(message + "\n")
    return EXIT_OK


# -- handlers ---------------------------------------------------------------------------


def run_create(ctx: Context, args: argparse.Namespace) -> int:
    """Create a session; `--wait` until approved; `--use` to select it."""
    ctx.operation = "work-session"
    body = create_body(args)
    client = ctx.client()
    if "assigned_user" in body and _is_me(client, str(body["assigned_user"])):
        # Naming yourself is the default, not an assignment (only superusers may assign).
        del body["assigned_user"]
    try:
        session: dict[str, Any] = client.post(SESSIONS, body)
    except ControlPlaneError as exc:
        raise _explained(exc, args) from None
    if args.wait:
        session = _wait(ctx, client, session, want_active=args.use, timeout=args.wait_timeout)
    return _after_create(ctx, session, use=args.use, waited=args.wait)


def _is_me(client: Client, who: str) -> bool:
    me = client.get(WHOAMI)
    return isinstance(me, dict) and who in (str(me.get("username")), str(me.get("id")))


_MAXIMUM = re.compile(r"(longer than|beyond) the maximum of (\d+) minutes")


def _explained(exc: ControlPlaneError, args: argparse.Namespace) -> ControlPlaneError:
    """A refused create, said in terms of the flags (`--expires-in 5h`, not `expires_at`)."""
    found = _MAXIMUM.search(exc.detail)
    if found is None:
        return exc
    minutes = int(found.group(2))
    limit = f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"
    given = f"--expires-in {args.expires_in}" if args.expires_in else "--expires-at"
    detail = f"{given} is longer than the longest work session allowed ({limit})"
    return ControlPlaneError(exc.status, exc.code, detail, exc.source)


def _wait(
    ctx: Context, client: Client, session: dict[str, Any], *, want_active: bool, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    wanted = {"active"} if want_active else {"approved", "active"}
    while session.get("status") not in wanted | ENDED:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        status = session.get("status")
        word = "activation" if status == "approved" else "approval"
        ctx.out.info(f"Waiting for {word}... ({int(timeout - remaining)}s of {int(timeout)}s)")
        params = {"status": status, "wait": max(1, min(LONG_POLL, int(remaining)))}
        session = client.get(session_path(str(session["id"])), params)
    return session


def _after_create(ctx: Context, session: dict[str, Any], *, use: bool, waited: bool) -> int:
    session_id, status = str(session.get("id")), str(session.get("status"))
    if status in ENDED:
        raise CliError(
            f"work session {session_id} is {status}",
            exit_code=EXIT_WORK_SESSION_ENDED,
            code="work_session_ended",
        )
    if status == "pending" or (use and status == "approved"):
        word = "approval" if status == "pending" else "its start time"
        hint = f"agentctl work-session use {session_id}"
        if ctx.out.json:
            ctx.out.document(
                {
                    "ok": False,
                    "status": "pending_approval",
                    "exit_code": EXIT_APPROVAL_PENDING,
                    "message": f"work session {session_id} is {status}, waiting for {word}",
                    "work_session_id": session_id,
                    "next_actions": [{"command": hint, "description": "once it is active"}],
                }
            )
        else:
            ctx.out.data(session_id + "\n")
            ctx.out.info(f"work session {session_id} is {status}; once active run: {hint}")
        return EXIT_APPROVAL_PENDING
    if use and status == "active":
        if ctx.token_is_gated:
            _store(ctx, session_id)
        else:
            ctx.note_not_gated(session_id, "use")
    message = f"work session {session_id} is {status}" + (" (selected)" if use else "")
    if ctx.out.json:
        return _success(ctx, "create", message, session)
    # One stable stdout whatever the status: `ID=$(agentctl work-session create ...)`.
    ctx.out.data(session_id + "\n")
    ctx.out.info(message)
    return EXIT_OK


def _store(ctx: Context, session_id: str | None) -> None:
    url = ctx.config.url
    if not url:
        raise CliError("no control plane configured; run `agentctl login URL --token TOKEN`")
    key = ctx.state_key
    assert key is not None  # the url is set
    save_active(state_path(ctx.config_path), key, session_id)


def run_use(ctx: Context, args: argparse.Namespace) -> int:
    """Select an active session for this shell, forget it (`clear`, `--unset`), or without
    an ID show the current selection."""
    ctx.operation = "work-session"
    if args.unset or (args.id or "").lower() in CLEAR_WORDS:
        _store(ctx, None)
        return _success(ctx, "unset", "no active work session", None)
    if not args.id:
        return run_current(ctx, args)
    if not ctx.token_is_gated:
        ctx.note_not_gated(args.id, "use")
        return _success(ctx, "use", f"work session {args.id} not selected", None)
    session = ctx.client().get(session_path(args.id))
    if session.get("status") != "active":
        raise CliError(
            f"work session {session.get('id')} is {session.get('status')}, not active",
            code="work_session_not_active",
        )
    if session.get("requester_type") == "agent":
        raise CliError("agent sessions are passed with --work-session, not selected with use")
    _store(ctx, str(session["id"]))
    return _success(ctx, "use", f"work session {session['id']} selected", session)


def run_action(ctx: Context, args: argparse.Namespace) -> int:
    """approve, reject, activate, complete, revoke, cancel."""
    ctx.operation = "work-session"
    verb: str = args.ws_verb
    session = ctx.client().post(session_path(target_session(ctx, args), verb), {})
    return _success(ctx, verb, f"work session {session['id']} is {session['status']}", session)


def run_extend(ctx: Context, args: argparse.Namespace) -> int:
    """Move a session's end later."""
    ctx.operation = "work-session"
    body = {"duration": args.expires_in} if args.expires_in else {"expires_at": args.expires_at}
    session = ctx.client().post(session_path(target_session(ctx, args), "extend"), body)
    message = f"work session {session['id']} now expires at {session['expires_at']}"
    return _success(ctx, "extend", message, session)


def run_update(ctx: Context, args: argparse.Namespace) -> int:
    """Add sudo patterns: the existing policies are sent back with the new ones."""
    ctx.operation = "work-session"
    client = ctx.client()
    session_id = target_session(ctx, args)
    session = client.get(session_path(session_id))
    if session.get("status") == "pending":
        raise CliError("the session is pending: set sudo patterns at create time")
    if "sudo" not in (session.get("scopes") or []):
        raise CliError("the session has no sudo scope; request a session with --scope sudo")
    policies = [*session.get("sudo_policies", []), *sudo_policies(args.sudo, args.sudo_reason)]
    updated = client.request(
        "PATCH", session_path(session_id), json_body={"sudo_policies": policies}
    )
    return _success(ctx, "update", f"work session {updated['id']} updated", updated)
