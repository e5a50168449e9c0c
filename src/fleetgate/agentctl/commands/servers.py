"""`server ls` (alias `servers`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fleetgate.agentctl.context import Context
from fleetgate.agentctl.errors import EXIT_OK
from fleetgate.agentctl.output import format_timestamp, yes_no


if TYPE_CHECKING:
    from fleetgate.agentctl.commands import SubParsers

SERVERS = "/api/servers/servers/"
HEADERS = ("NAME", "ID", "CONNECTED", "AGENT", "LAST SEEN")


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    """Add `server ls` and its shortcut `servers`."""
    server = subparsers.add_parser(
        "server", parents=[common], help="list servers", description="Manage servers."
    )
    verbs = server.add_subparsers(dest="server_command", metavar="COMMAND", required=True)
    ls = verbs.add_parser(
        "ls",
        aliases=["list"],
        parents=[common],
        help="list servers",
        description="List the registered servers and whether their agent is connected.",
    )
    ls.set_defaults(handler=run_ls)
    shortcut = subparsers.add_parser(
        "servers",
        parents=[common],
        help="same as `server ls`",
        description="List the registered servers (same as `server ls`).",
    )
    shortcut.set_defaults(handler=run_ls)


def server_rows(servers: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Table rows of the server list."""
    return [
        [
            str(s.get("name") or ""),
            str(s.get("id") or ""),
            yes_no(s.get("is_connected")),
            str(s.get("agent_version") or ""),
            format_timestamp(s.get("last_seen_at")),
        ]
        for s in servers
    ]


def run_ls(ctx: Context, args: argparse.Namespace) -> int:
    """Print the server list as a table or a JSON list."""
    ctx.operation = "server"
    servers = ctx.client().list_all(SERVERS)
    if ctx.out.json:
        ctx.out.document(servers)
    else:
        ctx.out.table(HEADERS, server_rows(servers))
    return EXIT_OK
