"""Command line of the agent: ``run``, ``check-config``, ``status``, ``register``,
``unregister`` and ``sudo install|uninstall``.

Exit statuses follow sysexits(3) so systemd can tell a configuration mistake (no restart)
from a crash (restart): 78 configuration, 73 state directory, 77 credentials refused,
69 (``status``) no daemon answers or (``register``) the control plane is unreachable.
``fleetgate-agent status`` exits 0 when connected and 1 when the daemon runs but is not connected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import structlog

from fleetgate import __version__
from fleetgate.agent import config as config_module
from fleetgate.agent.backhaul import ssl_context
from fleetgate.agent.config.access import SudoConfig
from fleetgate.agent.daemon import lifecycle
from fleetgate.agent.errors import (
    AuthRejected,
    ConfigError,
    RegistrationError,
    StateDirError,
    StatusUnavailable,
)
from fleetgate.agent.sudo import install as sudo_install
from fleetgate.agent.sudo.install import SudoInstallError, SudoLayout
from fleetgate.agent.system import query
from fleetgate.shared import logs


__all__ = ["EXIT_AUTH", "EXIT_CONFIG", "EXIT_STATE", "EXIT_UNAVAILABLE", "main"]

EXIT_CONFIG = 78
EXIT_STATE = 73
EXIT_AUTH = 77
EXIT_UNAVAILABLE = 69


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the requested subcommand; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.command == "register":
            return _register(args)
        if args.command == "unregister":
            return _unregister(args)
        if args.command == "sudo":
            return _sudo(args)
        cfg = config_module.load(args.config)
        if args.command == "status":
            return _status(cfg, as_json=args.json)
        if args.command == "check-config":
            cfg.read_key()
            ssl_context(cfg.control_plane)
            print(f"{args.config}: ok")
            return 0
    except ConfigError as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RegistrationError as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return exc.exit_status
    except SudoInstallError as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return 1
    return _run(cfg)


def _run(cfg: config_module.AgentConfig) -> int:
    logs.configure(cfg.logging.level, cfg.logging.format)
    log = structlog.get_logger("agent")
    try:
        asyncio.run(lifecycle.run(cfg))
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


def _status(cfg: config_module.AgentConfig, *, as_json: bool) -> int:
    try:
        snapshot = query(cfg.status_socket)
    except StatusUnavailable as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if as_json:
        print(json.dumps(snapshot, indent=2))
    else:
        print(_render_status(snapshot))
    connection = snapshot.get("connection") or {}
    return 0 if connection.get("status") == "connected" else 1


def _render_status(s: dict[str, Any]) -> str:
    conn = s.get("connection") or {}
    state = str(conn.get("status"))
    if state == "connected":
        state += f" since {conn.get('connected_since')}"
    elif conn.get("last_error"):
        state += f" (last error: {conn.get('last_error')})"
    rows = [
        ("agent", f"{s.get('agent_version')} (pid {s.get('pid')})"),
        ("server id", s.get("server_id")),
        ("control plane", s.get("control_plane")),
        ("connection", state),
        ("uptime", f"{float(s.get('uptime') or 0):.0f} s"),
        ("unconfirmed reports", s.get("unconfirmed_reports")),
        ("active commands", s.get("active_commands")),
    ]
    return "\n".join(f"{name + ':':<21}{value}" for name, value in rows)


def _register(args: argparse.Namespace) -> int:
    token = args.token
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"--token-file: cannot read {args.token_file}: {exc.strerror}"
            ) from exc
    if not token:
        raise ConfigError("register: --token or --token-file is required")
    from fleetgate.agent.system import enrol  # not with the daemon: tomlkit costs memory

    result = enrol.register(
        config_path=args.config,
        url=args.url,
        token=token,
        name=args.name,
        key_file=args.key_file,
        ca_file=args.ca_file,
    )
    print(result.message)
    return 0


def _unregister(args: argparse.Namespace) -> int:
    from fleetgate.agent.system import enrol  # not with the daemon: tomlkit costs memory

    print(enrol.unregister(config_path=args.config, keep_remote=args.local_only).message)
    return 0


def _sudo(args: argparse.Namespace) -> int:
    """Install or remove the sudo approval plugin (the config gives socket and group;
    without a config file, the defaults)."""
    if args.config.exists():
        cfg = config_module.load(args.config)
        socket, group = cfg.sudo_socket, cfg.sudo.group
    else:
        defaults = SudoConfig()
        socket, group = Path("/run/fleetgate-agent/sudo.sock"), defaults.group
    layout = SudoLayout(socket=socket, group=group, plugin_dir=args.plugin_dir)
    done = (
        sudo_install.install(layout) if args.action == "install" else sudo_install.uninstall(layout)
    )
    for line in done or ["nothing to do"]:
        print(line)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetgate-agent", description="Agent daemon for managed servers."
    )
    parser.add_argument("--version", action="version", version=f"fleetgate-agent {__version__}")
    sub = parser.add_subparsers(dest="command")
    commands: dict[str, argparse.ArgumentParser] = {}
    for name, text in (
        ("run", "run the daemon in the foreground"),
        ("check-config", "validate the configuration and the key file, then exit"),
        ("status", "show the running daemon's state (from its local status socket)"),
        ("register", "register this server with a control plane and store its identity"),
        ("unregister", "delete this server from the control plane and the local identity"),
        ("sudo", "install or remove the sudo approval plugin that lets the agent decide"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument(
            "--config",
            type=Path,
            default=config_module.DEFAULT_CONFIG_PATH,
            help=f"configuration file (default: {config_module.DEFAULT_CONFIG_PATH})",
        )
        commands[name] = cmd
    commands["status"].add_argument("--json", action="store_true", help="print the raw JSON")
    reg = commands["register"]
    reg.add_argument("--url", required=True, help="control plane base URL (https://…)")
    reg.add_argument("--name", required=True, help="this server's name in the control plane")
    reg.add_argument(
        "--token", help="a superuser API token (prefer --token-file: argv is visible in ps)"
    )
    reg.add_argument("--token-file", type=Path, help="read the token from this file")
    reg.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="where to store the server key (default: server.key beside the config)",
    )
    reg.add_argument("--ca-file", type=Path, help="PEM bundle to verify the control plane with")
    commands["unregister"].add_argument(
        "--local-only",
        action="store_true",
        help="only remove the local identity (the control plane is gone or unreachable)",
    )
    mediation = commands["sudo"]
    mediation.add_argument("action", choices=("install", "uninstall"))
    mediation.add_argument(
        "--plugin-dir",
        type=Path,
        default=SudoLayout.plugin_dir,
        help=f"where the plugin is built (default: {SudoLayout.plugin_dir})",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
