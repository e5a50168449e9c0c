"""agentctl entry point: argument parsing, dispatch, and the error -> exit code contract."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NoReturn, TextIO

from fleetgate import __version__
from fleetgate.agentctl.commands import EXEC_VERBS, register_all
from fleetgate.agentctl.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    AgentctlError,
    ErrorContext,
    UsageError,
    diagnose,
)
from fleetgate.agentctl.output import Output


if TYPE_CHECKING:
    import httpx

    from fleetgate.agentctl.context import Context, Handler

OUTPUT_MODES = ("table", "json")
# Root options that take a value: needed to find the subcommand word before argparse runs.
_VALUE_OPTIONS = frozenset({"--output", "--config"})


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError instead of exiting, so main() returns 2."""

    def error(self, message: str) -> NoReturn:
        """Report a usage error to main() (argparse would call sys.exit)."""
        raise UsageError(message, self.format_usage())


def build_parser(command: str | None = None) -> Parser:
    """The parser: global flags, then the subparsers of `command`'s group (all groups when
    `command` is None or unknown: `--help`, a typo)."""
    parser = Parser(
        prog="agentctl",
        description="Operator CLI of the control plane: run commands on servers, "
        "list servers and command history.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 3 work-session gate denied (or the "
        "session ended), 4 approval pending, 6 the requested work session ended (rejected, "
        "cancelled, ...) while waiting, 130 interrupted; `exec` exits with the remote "
        "command's exit code.",
    )
    parser.add_argument("--version", action="version", version=f"agentctl {__version__}")
    _add_global_flags(parser, defaults=True)
    # Subcommands accept the global flags too; SUPPRESS keeps a value given before the
    # subcommand from being reset to the default by the subparser.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_flags(common, defaults=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_all(subparsers, common, command)
    return parser


def _add_global_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    parser.add_argument(
        "--output",
        choices=OUTPUT_MODES,
        default="table" if defaults else argparse.SUPPRESS,
        help="table (default) or json; with json, errors are JSON on stderr",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None if defaults else argparse.SUPPRESS,
        help="config file (default: $AGENTCTL_CONFIG, else $XDG_CONFIG_HOME/agentctl/config.toml)",
    )


def split_remote(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """Split at the first `--`: agentctl's own arguments, and the remote command words."""
    args = list(argv)
    if "--" in args:
        at = args.index("--")
        return args[:at], args[at + 1 :]
    return args, None


def _command_index(args: Sequence[str]) -> int | None:
    """Where the command word is: the first word that is neither an option nor its value."""
    i = 0
    while i < len(args):
        word = args[i]
        if word in _VALUE_OPTIONS:
            i += 2
            continue
        if word.startswith("-"):
            i += 1
            continue
        return i
    return None


def command_word(argv: Sequence[str]) -> str | None:
    """The command word of `argv` (`exec`, `work-session`, ...), or None."""
    head, _ = split_remote(argv)
    at = _command_index(head)
    return None if at is None else head[at]


def insert_default_verb(argv: Sequence[str]) -> list[str]:
    """`exec SERVER ...` -> `exec run SERVER ...`: `run` is exec's default verb."""
    args = list(argv)
    i = _command_index(args)
    # A bare `exec` or `exec -h` shows run's usage, the most useful one.
    if (
        i is not None
        and args[i] == "exec"
        and (i + 1 >= len(args) or args[i + 1] not in EXEC_VERBS)
    ):
        args.insert(i + 1, "run")
    return args


def parse_args(parser: Parser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse `argv`: the part after `--` becomes `remote_argv`, stray words `extra_words`."""
    head, remote = split_remote(argv)
    args, extras = parser.parse_known_args(insert_default_verb(head))
    takes_remote = bool(getattr(args, "takes_remote", False))
    # Plain words after SERVER are the remote command (`exec web-01 uptime`); an unknown
    # option is a usage error, since agentctl cannot tell whose option it is.
    if extras and (not takes_remote or any(w.startswith("-") for w in extras)):
        hint = "; put the remote command after `--`" if takes_remote else ""
        raise UsageError(f"unrecognized arguments: {' '.join(extras)}{hint}", parser.format_usage())
    if remote is not None and not takes_remote:
        raise UsageError("`--` is only valid before a remote command", parser.format_usage())
    args.extra_words = extras
    args.remote_argv = remote
    return args


def _wants_json(argv: Sequence[str]) -> bool:
    head, _ = split_remote(argv)
    return "--output=json" in head or any(
        a == "--output" and b == "json" for a, b in itertools.pairwise(head)
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Run agentctl; return the exit code. The keyword arguments exist for tests."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Imported here: `--help` and usage errors need neither (`entry` answers `--version`).
    from fleetgate.agentctl import config as cfg
    from fleetgate.agentctl.context import Context

    env = os.environ if env is None else env
    out = Output(stdout=stdout or sys.stdout, stderr=stderr or sys.stderr)
    out.mode = "json" if _wants_json(argv) else "table"
    parser = build_parser(command_word(argv))
    try:
        # argparse prints --help/--version on sys.stdout: send it where this call's data goes.
        with contextlib.redirect_stdout(out.stdout):
            args = parse_args(parser, argv)
    except UsageError as exc:
        out.diagnostic(diagnose(exc, ErrorContext()))
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    out.mode = args.output
    handler: Handler = args.handler
    error_context = ErrorContext()
    ctx: Context | None = None
    try:
        path, config = cfg.load(args.config, env)
        ctx = Context(
            out=out,
            config_path=path,
            config=config,
            env=env,
            stdin=stdin or sys.stdin,
            transport=transport,
        )
        return handler(ctx, args)
    except AgentctlError as exc:
        if ctx is not None:
            error_context = ctx.error_context()
        diagnostic = diagnose(exc, error_context)
        out.diagnostic(diagnostic)
        return diagnostic.exit_code
    except KeyboardInterrupt:
        out.info("agentctl: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`agentctl exec ls | head`): not worth a traceback.
        _silence_stdout()
        return EXIT_FAILURE
    finally:
        if ctx is not None:
            ctx.close()


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
