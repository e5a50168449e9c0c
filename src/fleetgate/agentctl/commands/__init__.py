"""Command groups. Each module registers its subcommands on the root parser.

A group module exposes `register(subparsers, common)`: `subparsers` is the root's
subparsers action, `common` the parent parser carrying the global flags (so `--output json`
is also accepted after the subcommand). Every leaf parser sets `handler=<Handler>` with
`set_defaults`; a leaf that takes a remote command after `--` also sets `takes_remote=True`
and finds the words after `--` in `args.remote_argv`.

Group modules are imported lazily: an invocation imports only the group of its command word
(`agentctl exec ...` never imports the modules of `cp`, `tunnel` or `websh`, nor their
libraries), and all groups only when the word is unknown or absent (`--help`, a typo).
To add a group, write `commands/<group>.py` with a `register` function and list its command
words in `GROUPS`; nothing else changes.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from typing import TypeAlias

    SubParsers: TypeAlias = argparse._SubParsersAction[Any]
    Register: TypeAlias = Callable[[SubParsers, argparse.ArgumentParser], None]

# Group module -> the command words it registers; the order is the order of `agentctl --help`.
GROUPS: dict[str, tuple[str, ...]] = {
    "auth": ("login", "logout", "whoami"),
    "servers": ("server", "servers"),
    "worksession": ("work-session", "session"),
    "exec_cmd": ("exec",),
    "files": ("cp", "edit"),
    "tunnel": ("tunnel",),
    "websh": ("websh",),
    "ssh": ("ssh", "ssh-config", "ssh-proxy"),
}
EXEC_VERBS = frozenset({"run", "logs", "ls", "list", "history"})
"""The verbs of `exec`; any other word after `exec` is a SERVER of the default verb `run`."""


def group_of(word: str | None) -> str | None:
    """The group module that registers the command `word`, if any."""
    for module, words in GROUPS.items():
        if word in words:
            return module
    return None


def register_all(
    subparsers: SubParsers, common: argparse.ArgumentParser, command: str | None = None
) -> None:
    """Let the group of `command` add its subcommands (every group when it is unknown)."""
    group = group_of(command)
    for module in GROUPS if group is None else (group,):
        loaded = importlib.import_module(f"fleetgate.agentctl.commands.{module}")
        register: Register = loaded.register
        register(subparsers, common)
