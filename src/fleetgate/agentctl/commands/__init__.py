"""Command groups. Each module registers its subcommands on the root parser.

A group module exposes `register(subparsers, common)`: `subparsers` is the root's
subparsers action, `common` the parent parser carrying the global flags (so `--output json`
is also accepted after the subcommand). Every leaf parser sets `handler=<Handler>` with
`set_defaults`; a leaf that takes a remote command after `--` also sets `takes_remote=True`
and finds the words after `--` in `args.remote_argv`.

To add a group (`work-session`, `websh`, `cp`, `tunnel`), write `commands/<group>.py` with a
`register` function and list it in `GROUPS`; nothing else changes.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fleetgate.agentctl.commands import (
    auth,
    exec_cmd,
    files,
    servers,
    ssh,
    tunnel,
    websh,
    worksession,
)


if TYPE_CHECKING:
    from typing import TypeAlias

    SubParsers: TypeAlias = argparse._SubParsersAction[Any]
    Register: TypeAlias = Callable[[SubParsers, argparse.ArgumentParser], None]

# Order is the order of `agentctl --help`.
GROUPS: tuple[Register, ...] = (
    auth.register,
    servers.register,
    worksession.register,
    exec_cmd.register,
    files.register,
    tunnel.register,
    websh.register,
    ssh.register,
)


def register_all(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    """Let every command group add its subcommands."""
    for register in GROUPS:
        register(subparsers, common)
