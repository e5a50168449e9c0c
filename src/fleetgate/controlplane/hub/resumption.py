"""What an agent missed while it was away, sent once its ``hello`` is welcomed: its
commands not yet delivered, ``terminal.end`` for its terminals closed here, and
``work_session.ended`` for the work sessions that ended while it still runs their
commands (:func:`fleetgate.controlplane.store.hello.resume` reads them)."""

from __future__ import annotations

import uuid

import structlog

from fleetgate.controlplane.hub.registry import AgentConnection
from fleetgate.controlplane.hub.undeliverable import Notify, deliver
from fleetgate.controlplane.store import Database, hello as hello_store
from fleetgate.controlplane.timeutil import now_us
from fleetgate.shared.protocol import TerminalEnd, WorkSessionEnded


__all__ = ["UNDELIVERED_END_WINDOW_US", "send_missed"]

log = structlog.get_logger("fleetgate.controlplane.hub")

UNDELIVERED_END_WINDOW_US = 24 * 3600 * 1_000_000
"""How far back a reconnecting agent is told again to end the terminals closed here."""


async def send_missed(
    conn: AgentConnection, db: Database, running: list[str], notify: Notify
) -> None:
    """Send ``conn``'s agent what it missed (``running``: the commands it says it runs);
    stops at the first send that fails (the link is gone: the next hello sends it)."""
    now = now_us()
    resumed = await db.write(
        hello_store.resume,
        conn.server_id,
        now=now,
        running=running,
        closed_since=now - UNDELIVERED_END_WINDOW_US,
    )
    for row in resumed.commands:
        if not await deliver(conn, db, row, notify):
            break
        log.debug("command.sent", server_id=conn.server_id, command_id=row.id, redelivery=True)
    await _end_closed_terminals(conn, resumed.closed_terminals)
    await _end_sessions(conn, resumed.ended_sessions)


async def _end_closed_terminals(conn: AgentConnection, closed: list[tuple[str, str]]) -> None:
    """Terminals closed here (revoked, deleted) while this agent may have been away:
    ``terminal.end`` again, so a detached shell does not wait for its grace. An agent
    ignores a terminal it no longer has."""
    for terminal_id, reason in closed:
        message = TerminalEnd(terminal_id=uuid.UUID(terminal_id), reason=reason[:1024])
        if not await conn.send_quietly(message):
            break
    if closed:
        log.info("terminal.end_resent", server_id=conn.server_id, terminals=len(closed))


async def _end_sessions(conn: AgentConnection, ended: list[tuple[str, str]]) -> None:
    """Work sessions that ended while this agent was away, with commands it still
    runs: ``work_session.ended`` again, so those stop now instead of at their
    timeout (the hub sent it only to the agents connected then)."""
    for session_id, status in ended:
        message = WorkSessionEnded(work_session=session_id, status=status)
        if not await conn.send_quietly(message):
            return
        log.info("work_session.end_resent", server_id=conn.server_id, work_session=session_id)
