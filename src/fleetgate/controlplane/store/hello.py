"""An agent's ``hello`` in two database turns instead of four.

Every agent that connects records its hello (the server row, maybe its SSH host key),
then, once welcomed, claims the commands it missed and reads the terminals closed while
it was away. Each of those was one call on the database thread (a transaction and a
hop between the event loop and the thread); with thousands of agents connecting at
once, the hops cost more than the statements.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection

from fleetgate.controlplane.store import (
    commands as commands_store,
    servers as servers_store,
    ssh as ssh_store,
    terminals as terminals_store,
)
from fleetgate.controlplane.store.commands import CommandRow


__all__ = ["Resumed", "record_hello", "resume"]


def record_hello(
    conn: Connection,
    server_id: str,
    *,
    agent_version: str,
    hostname: str,
    connected_at: int,
    last_seen_at: int,
    labels: dict[str, str] | None,
    ssh_host_key: str | None,
) -> None:
    """:func:`~.servers.mark_connected` and, when announced, the SSH host key
    (:func:`~.ssh.set_host_key`), in the caller's one transaction."""
    servers_store.mark_connected(
        conn,
        server_id,
        agent_version=agent_version,
        hostname=hostname,
        connected_at=connected_at,
        last_seen_at=last_seen_at,
        labels=labels,
    )
    if ssh_host_key:
        ssh_store.set_host_key(conn, server_id, ssh_host_key)


@dataclass(frozen=True)
class Resumed:
    """What a welcomed agent is sent at once."""

    commands: list[CommandRow]
    """Its due, undelivered commands, marked as sent (:func:`~.commands.claim_for_hello`)."""
    closed_terminals: list[tuple[str, str]]
    """``(id, close reason)`` of its terminals closed since the window's start whose
    recording has not arrived (:func:`~.terminals.closed_unrecorded`)."""


def resume(
    conn: Connection, server_id: str, *, now: int, running: Iterable[str], closed_since: int
) -> Resumed:
    """Claim the commands for a welcomed agent and read its closed terminals, in the
    caller's one (write) transaction."""
    rows = commands_store.claim_for_hello(conn, server_id, now=now, running=running)
    closed = terminals_store.closed_unrecorded(conn, server_id, since=closed_since)
    return Resumed(rows, closed)
