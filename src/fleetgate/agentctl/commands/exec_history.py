"""`exec logs ID` and `exec ls` (alias `exec history`): commands already submitted, and
what `exec` says when a command is refused or has finished."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from fleetgate.agentctl.client import Client
from fleetgate.agentctl.context import Context
from fleetgate.agentctl.errors import EXIT_OK, AgentctlError, ControlPlaneError
from fleetgate.agentctl.output import format_seconds, format_timestamp, truncate
from fleetgate.agentctl.results import is_finished, outcome, result_document, status_text
from fleetgate.agentctl.stream import fetch_output


COMMANDS = "/api/events/commands/"
SERVERS = "/api/servers/servers/"
SESSIONS = "/api/work-sessions/sessions/"
LS_HEADERS = ("SERVER", "COMMAND", "USER", "STATUS", "EXIT", "ELAPSED", "REQUESTED AT")
COMMAND_WIDTH = 60


def report_result(ctx: Context, command: Mapping[str, Any], output: str) -> int:
    """Print a finished command's result document (JSON) or its problem; its exit code."""
    exit_code, problem = outcome(command)
    if ctx.out.json:
        # The document carries status and error_phase; stderr stays free for diagnostics.
        ctx.out.document(result_document(command, output))
    elif problem:
        ctx.out.info(problem)
    return exit_code


def explain_denial(ctx: Context, client: Client) -> None:
    """Fetch what a gate diagnostic names: `whoami`'s auth method and the selected session
    (its status, start time and flags). Best effort: what cannot be read stays unknown."""
    try:
        me = client.get("/api/auth/whoami/")
        ctx.auth_method = str(me.get("auth_method")) if isinstance(me, dict) else None
    except AgentctlError:
        pass
    if ctx.work_session:
        try:
            session = client.get(f"{SESSIONS}{quote(ctx.work_session, safe='')}/")
            ctx.session = session if isinstance(session, dict) else None
        except AgentctlError:
            pass


def run_logs(ctx: Context, args: argparse.Namespace) -> int:
    """Print a command's output; exit with its exit code (0 with a hint while it runs)."""
    ctx.operation = "command"
    ctx.work_session = ctx.selected_work_session(args.work_session)
    client = ctx.client()
    try:
        command = client.get(f"{COMMANDS}{quote(args.command_id, safe='')}/")
    except ControlPlaneError as exc:
        if exc.is_gate_denial:
            explain_denial(ctx, client)
        raise
    output = fetch_output(client, command)
    if is_finished(command):
        if not ctx.out.json:
            ctx.out.data(output)
        return report_result(ctx, command, output)
    if ctx.out.json:
        ctx.out.document(result_document(command, output))  # its status says it is running
    else:
        ctx.out.data(output)
        ctx.out.info(
            f"agentctl: command {args.command_id} is {status_text(command) or 'not finished'}; "
            f"run `agentctl exec logs {args.command_id}` again later for the rest"
        )
    return EXIT_OK


def history_rows(commands: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Table rows of `exec ls`."""
    rows = []
    for c in commands:
        code = c.get("exit_code")
        rows.append(
            [
                str(c.get("server_name") or c.get("server") or ""),
                truncate(" ".join(str(c.get("line") or "").split()), COMMAND_WIDTH),
                str(c.get("username") or ""),
                status_text(c),
                "" if code is None else str(code),
                format_seconds(c.get("elapsed_time")),
                format_timestamp(c.get("added_at")),
            ]
        )
    return rows


def run_ls(ctx: Context, args: argparse.Namespace) -> int:
    """List recent commands, newest first."""
    ctx.operation = "command"
    client = ctx.client()
    params: dict[str, Any] = {"ordering": "-added_at"}
    if args.server:
        # The list filter wants the server's uuid; the detail route accepts a name or an id.
        ctx.server = args.server
        server = client.get(f"{SERVERS}{quote(args.server, safe='')}/")
        params["server"] = server["id"]
    if args.search:
        params["search"] = args.search
    commands = client.list_all(COMMANDS, params, limit=args.tail)
    if ctx.out.json:
        ctx.out.document(commands)
    else:
        ctx.out.table(LS_HEADERS, history_rows(commands))
    return EXIT_OK
