"""`exec SERVER -- CMD...`, `exec logs ID`, `exec ls` (alias `exec history`).

`exec` has a default verb: `agentctl exec web-01 -- uptime` is `exec run web-01 -- uptime`
(main() inserts `run` when the word after `exec` is not one of EXEC_VERBS).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fleetgate.agentctl.client import Client
from fleetgate.agentctl.commands.exec_history import (
    COMMANDS,
    explain_denial,
    report_result,
    run_logs,
    run_ls,
)
from fleetgate.agentctl.context import Context
from fleetgate.agentctl.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliError,
    ControlPlaneError,
    Diagnostic,
    UsageError,
)
from fleetgate.agentctl.fanout import run_fanout
from fleetgate.agentctl.stream import follow_command


if TYPE_CHECKING:
    from fleetgate.agentctl.commands import SubParsers

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def env_pair(value: str) -> tuple[str, str]:
    """Parse one `--env K=V` (argparse type): K must be a shell variable name."""
    name, sep, content = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected K=V, got {value!r}")
    if not _ENV_NAME.match(name):
        raise argparse.ArgumentTypeError(f"invalid variable name {name!r} in {value!r}")
    return name, content


def positive_int(value: str) -> int:
    """argparse type for counts and seconds: an integer >= 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    """Add `exec` with its verbs `run` (default), `logs` and `ls`."""
    exec_parser = subparsers.add_parser(
        "exec",
        parents=[common],
        help="run a command on a server, show command history",
        description="Run a command on a server (`agentctl exec SERVER -- CMD...`), show the "
        "output of a past command (`exec logs ID`) or the history (`exec ls`).",
    )
    verbs = exec_parser.add_subparsers(dest="exec_command", metavar="COMMAND", required=True)

    run = verbs.add_parser(
        "run",
        parents=[common],
        help="run a command (the default: `exec SERVER -- CMD`)",
        usage="agentctl exec [options] SERVER [--] CMD...",
        description="Run CMD on SERVER (a name or an id) and stream its output; agentctl "
        "exits with the remote exit code. The CMD words are joined with single spaces and run "
        "by /bin/sh -c on the server, as ssh does: quote a whole command line to pass it as is.",
    )
    run.add_argument(
        "server", metavar="SERVER", nargs="?", help="server name or id (omit with -s or -l)"
    )
    run.add_argument(
        "-s",
        "--servers",
        metavar="NAME,...",
        help="run on each of these servers at once (names or ids, comma-separated)",
    )
    run.add_argument(
        "-l",
        "--selector",
        metavar="KEY=VALUE,...",
        help="run on every server whose labels match (e.g. role=web,env!=prod)",
    )
    run.add_argument(
        "--grouped",
        action="store_true",
        help="with -s/-l: print each server's output as one block once it finished",
    )
    run.add_argument(
        "-u",
        "--user",
        help="run as this user (default: root, or your server account if you are gated)",
    )
    run.add_argument("-g", "--group", help="run with this group (default: the user's)")
    run.add_argument(
        "--env",
        action="append",
        type=env_pair,
        default=[],
        metavar="K=V",
        help="environment variable for the command (repeatable)",
    )
    run.add_argument(
        "--timeout",
        type=positive_int,
        metavar="SECONDS",
        help="kill the command after this many seconds",
    )
    run.add_argument(
        "--detach", action="store_true", help="print the command id and return without waiting"
    )
    run.add_argument(
        "--sudo",
        action="store_true",
        help="elevate: run as root if the command (plain words, no shell syntax) matches a "
        "sudo pattern of the work session",
    )
    run.add_argument(
        "--work-session",
        metavar="ID",
        help="work session to attach to (default: $AGENTCTL_WORK_SESSION, then `work-session use`)",
    )
    run.set_defaults(handler=run_exec, takes_remote=True)

    logs = verbs.add_parser(
        "logs",
        parents=[common],
        help="print the output of a command",
        description="Print the full output of a command and exit with its exit code.",
    )
    logs.add_argument("command_id", metavar="ID", help="command id")
    logs.add_argument(
        "--work-session",
        metavar="ID",
        help="work session to read with (default: $AGENTCTL_WORK_SESSION, then `work-session use`)",
    )
    logs.set_defaults(handler=run_logs)

    history = verbs.add_parser(
        "ls",
        aliases=["history", "list"],
        parents=[common],
        help="list recent commands",
        description="List recent commands, newest first.",
    )
    history.add_argument("-s", "--server", help="only commands of this server (name or id)")
    history.add_argument(
        "-n",
        "--tail",
        type=positive_int,
        default=25,
        metavar="N",
        help="how many commands (default: 25)",
    )
    history.add_argument(
        "--search", metavar="TEXT", help="substring of the server name, command line or requester"
    )
    history.set_defaults(handler=run_ls)


def remote_line(words: Sequence[str]) -> str:
    """The remote command line: the CMD words joined by single spaces (ssh semantics)."""
    line = " ".join(words)
    if not line.strip():
        raise UsageError("a remote command is required: agentctl exec SERVER -- CMD...")
    return line


def command_words(args: argparse.Namespace) -> list[str]:
    """CMD words: what follows `--`, else the plain words after SERVER."""
    before: list[str] = list(getattr(args, "extra_words", []))
    after: list[str] | None = getattr(args, "remote_argv", None)
    if after is None:
        return before
    if before:
        raise UsageError(
            f"unexpected words before `--`: {' '.join(before)}; put the whole command after `--`"
        )
    return after


def create_body(
    server: str,
    line: str,
    *,
    user: str | None = None,
    group: str | None = None,
    env: Sequence[tuple[str, str]] = (),
    timeout: int | None = None,
    work_session: str | None = None,
    sudo: bool = False,
) -> dict[str, Any]:
    """The POST body of a command create (docs/api.md)."""
    body: dict[str, Any] = {
        "server": server,
        "line": line,
        "shell": "system",
        "groupname": group or "",
        "env": dict(env),
        "scheduled_at": None,
        "timeout": timeout,
    }
    if user:
        body["username"] = user
    if work_session:
        body["work_session"] = work_session
    if sudo:
        body["sudo"] = True
    return body


def _fanout_words(args: argparse.Namespace) -> list[str]:
    """With -s/-l there is no SERVER: a word in its place starts the command."""
    first = [args.server] if args.server else []
    if first and args.remote_argv is not None:
        raise UsageError(f"unexpected word before `--`: {args.server}; with -s/-l give no SERVER")
    args.extra_words = [*first, *args.extra_words]
    return command_words(args)


def run_exec(ctx: Context, args: argparse.Namespace) -> int:
    """Submit the command, then stream its output and return its exit code."""
    fanout = args.servers is not None or args.selector is not None
    if not fanout and not args.server:
        raise UsageError("a server is required: agentctl exec SERVER -- CMD (or -s/-l)")
    if args.grouped and not fanout:
        raise UsageError("--grouped needs -s/--servers or -l/--selector")
    line = remote_line(_fanout_words(args) if fanout else command_words(args))
    ctx.operation = "sudo" if args.sudo else "command"
    ctx.server = args.server if not fanout else (args.servers or args.selector)
    ctx.work_session = ctx.selected_work_session(args.work_session)
    client = ctx.client()
    body = create_body(
        args.server or "",
        line,
        user=args.user,
        group=args.group,
        env=args.env,
        timeout=args.timeout,
        work_session=ctx.work_session,
        sudo=args.sudo,
    )
    try:
        if fanout:
            return run_fanout(
                ctx,
                client,
                body,
                servers=args.servers,
                selector=args.selector,
                grouped=args.grouped,
                detach=args.detach,
            )
        return _submit(ctx, client, body, detach=args.detach)
    except ControlPlaneError as exc:
        if exc.is_gate_denial:
            explain_denial(ctx, client)
        raise


def _submit(ctx: Context, client: Client, body: dict[str, Any], *, detach: bool) -> int:
    if detach:
        detached = _created_id(client.post(COMMANDS, body))
        if ctx.out.json:
            ctx.out.document({"id": detached})
        else:
            ctx.out.data(detached + "\n")
            ctx.out.info(f"see its output with: agentctl exec logs {detached}")
        return EXIT_OK
    collected: list[str] = []
    on_output = collected.append if ctx.out.json else ctx.out.data
    command_id: str | None = None
    try:
        # One request: the create answers with the command's own output stream; a broken
        # stream is resumed by follow_command with GET .../stream/?seq__gte=.
        with client.post_stream(COMMANDS, {"stream": "true"}, body) as events:
            first = next(events, None)
            if first is None or first.get("event") != "created":
                raise CliError("the control plane did not return the created command")
            command_id = _created_id(first.get("command"))
            command = follow_command(client, command_id, on_output, events=events)
    except KeyboardInterrupt:
        if command_id is None:
            raise
        ctx.out.diagnostic(interrupted_diagnostic(command_id))
        return EXIT_INTERRUPTED
    return report_result(ctx, command, "".join(collected))


def _created_id(created: Any) -> str:
    """The id of the command a create returned."""
    if isinstance(created, list):  # the reference CLI's servers answer with a list
        created = created[0] if created else None
    if not isinstance(created, dict) or "id" not in created:
        raise CliError("the control plane did not return the created command")
    return str(created["id"])


def interrupted_diagnostic(command_id: str) -> Diagnostic:
    """What Ctrl-C while following says: the command lives on, and how to see it."""
    reason = f"stopped following command {command_id}; it may still be running"
    logs = f"agentctl exec logs {command_id}"
    return Diagnostic(
        EXIT_INTERRUPTED,
        ["", f"agentctl: {reason}. See its output with: {logs}"],
        {
            "ok": False,
            "exit_code": EXIT_INTERRUPTED,
            "error_code": "interrupted",
            "reason": reason,
            "context": {"operation": "command", "command_id": command_id},
            "next_actions": [{"command": logs, "description": "show the command's output"}],
        },
    )
