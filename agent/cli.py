"""Command line of the agent: ``agent run``, ``agent check-config``, ``agent --version``.

Exit statuses follow sysexits(3) so systemd can tell a configuration mistake (no restart)
from a crash (restart): 78 configuration, 73 state directory, 77 credentials refused.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import structlog

from agent import __version__, config as config_module, daemon, logs
from agent.errors import AuthRejected, ConfigError, StateDirError


__all__ = ["EXIT_AUTH", "EXIT_CONFIG", "EXIT_STATE", "main"]

EXIT_CONFIG = 78
EXIT_STATE = 73
EXIT_AUTH = 77


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the requested subcommand; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        cfg = config_module.load(args.config)
    except ConfigError as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        try:
            cfg.read_key()
        except ConfigError as exc:
            print(f"agent: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"{args.config}: ok")
        return 0
    logs.configure(cfg.logging.level, cfg.logging.format)
    log = structlog.get_logger("agent")
    try:
        asyncio.run(daemon.run(cfg))
    except ConfigError as exc:
        log.error("agent.config_error", error=str(exc))
        return EXIT_CONFIG
    except StateDirError as exc:
        log.error("agent.state_dir_error", error=str(exc))
        return EXIT_STATE
    except AuthRejected as exc:
        log.error("agent.auth_rejected", error=str(exc))
        return EXIT_AUTH
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent", description="Agent daemon for managed servers.")
    parser.add_argument("--version", action="version", version=f"agent {__version__}")
    sub = parser.add_subparsers(dest="command")
    for name, text in (
        ("run", "run the daemon in the foreground"),
        ("check-config", "validate the configuration and the key file, then exit"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument(
            "--config",
            type=Path,
            default=config_module.DEFAULT_CONFIG_PATH,
            help=f"configuration file (default: {config_module.DEFAULT_CONFIG_PATH})",
        )
    return parser


if __name__ == "__main__":
    sys.exit(main())
