"""An agent's ``hello`` in two database turns instead of four.

Every agent that connects records its hello (the server row, maybe its SSH host key),
then, once welcomed, claims the commands it missed and reads what ended while it was
away: its terminals closed here, and the work sessions of the commands it says it is
running that are no longer live. Each of those was one call on the database thread (a
transaction and a hop between the event loop and the thread); with thousands of agents
connecting at once, the hops cost more than the statements.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, select

from fleetgate.controlplane.store import (
    command_delivery,
    servers as servers_store,
    ssh as ssh_store,
    tables as t,
    terminals as terminals_store,
)
from fleetgate.controlplane.store.command_rows import CommandRow
from fleetgate.controlplane.worksession.lifecycle import LIVE


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
    """Its due, undelivered commands, marked as sent (:func:`~.command_delivery.claim_for_hello`)."""
    closed_terminals: list[tuple[str, str]]
    """``(id, close reason)`` of its terminals closed since the window's start whose
    recording has not arrived (:func:`~.terminals.closed_unrecorded`)."""
    ended_sessions: list[tuple[str, str]]
    """``(id, status)`` of the work sessions, no longer live, of the commands it is
    running (:func:`ended_sessions_of`)."""


def resume(
    conn: Connection, server_id: str, *, now: int, running: Iterable[str], closed_since: int
) -> Resumed:
    """Claim the commands for a welcomed agent and read its closed terminals and the
    ended sessions of its running commands, in the caller's one (write) transaction."""
    running = list(running)
    rows = command_delivery.claim_for_hello(conn, server_id, now=now, running=running)
    closed = terminals_store.closed_unrecorded(conn, server_id, since=closed_since)
    return Resumed(rows, closed, ended_sessions_of(conn, server_id, running))


_RUNNING_PER_QUERY = 500
"""Command ids per ``IN`` list (an agent may announce up to 10,000)."""


def ended_sessions_of(
    conn: Connection, server_id: str, running: list[str]
) -> list[tuple[str, str]]:
    """``(id, status)`` of every work session that is no longer live (completed,
    revoked, expired, ...) and has a command of ``server_id`` among ``running``, in id
    order. An agent that was away when such a session ended heard no
    ``work_session.ended``: this is what it is sent again after its ``hello``."""
    c, ws = t.commands.c, t.work_sessions.c
    live = [status.value for status in LIVE]
    ended: dict[str, str] = {}
    for start in range(0, len(running), _RUNNING_PER_QUERY):
        stmt = (
            select(ws.id, ws.status)
            .join_from(t.commands, t.work_sessions, c.work_session_id == ws.id)
            .where(
                c.id.in_(running[start : start + _RUNNING_PER_QUERY]),
                c.server_id == server_id,
                ws.status.not_in(live),
            )
        )
        ended.update((row.id, row.status) for row in conn.execute(stmt))
    return sorted(ended.items())
