"""Sending a stored command to its agent, or failing it when it can never be sent.

A command is sent as one ``command.run`` frame. One the agent cannot accept (larger than
the ``max_message_bytes`` it announced in ``hello``, or no longer valid under today's
limits: older data, or a limit that changed) is not sent at all: sending it would only
have it refused (or the link dropped) again on every reconnect. It is finished at once
with ``error_phase`` ``undeliverable``, a message naming the limit, and its environment
erased. The agent's own refusal of a frame (an ``error`` whose ``ref`` is a command id)
finishes the command the same way (:func:`fail_refused`).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from pydantic import ValidationError

from fleetgate.controlplane.hub.registry import AgentConnection, run_message
from fleetgate.controlplane.store import Database, command_delivery
from fleetgate.controlplane.store.command_rows import CommandRow
from fleetgate.controlplane.timeutil import now_us
from fleetgate.shared.protocol import DEFAULT_MAX_MESSAGE_BYTES, CommandRun, encode
from fleetgate.shared.protocol.limits import frame_problem


__all__ = ["UNDELIVERABLE", "Notify", "deliver", "deliver_run", "fail_refused"]

log = structlog.get_logger("fleetgate.controlplane.hub")

UNDELIVERABLE = "undeliverable"
"""The ``error_phase`` of a command that never reached its agent."""

Notify = Callable[[list[str]], None]


async def deliver(conn: AgentConnection, db: Database, row: CommandRow, notify: Notify) -> bool:
    """Send ``row``'s ``command.run`` on ``conn``, or finish it when it cannot be sent.

    Returns ``False`` only when the transport failed (the connection is gone): the
    caller stops sending on it. A command finished here returns ``True``.
    """
    try:
        run = run_message(row)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "command"
        problem = f"the stored command is not valid: {where}: {first['msg']}"
        await _fail(db, row.id, row.server_id, problem, notify)
        return True
    return await deliver_run(conn, db, run, notify)


async def deliver_run(conn: AgentConnection, db: Database, run: CommandRun, notify: Notify) -> bool:
    """:func:`deliver` for a ``command.run`` already built (a fan-out's)."""
    text = encode(run)
    limit = conn.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES
    problem = frame_problem(len(text.encode("utf-8", "surrogatepass")), limit)
    if problem is None:
        return await conn.send_quietly(text)
    await _fail(db, str(run.command_id), conn.server_id, problem, notify)
    return True


async def fail_refused(
    db: Database, server_id: str, command_id: str, code: str, message: str, notify: Notify
) -> bool:
    """The agent refused the frame of ``command_id`` (``too_large``, ``invalid``...):
    finish the command if it was not delivered. Whether ``command_id`` was such a command."""
    return await _fail(
        db, command_id, server_id, f"refused by the agent: {code}: {message}", notify
    )


async def _fail(
    db: Database, command_id: str, server_id: str, problem: str, notify: Notify
) -> bool:
    changed = await db.write(
        command_delivery.fail_undelivered,
        command_id,
        server_id=server_id,
        now=now_us(),
        phase=UNDELIVERABLE,
        message=problem,
    )
    if changed:
        log.warning("command.undeliverable", command_id=command_id, reason=problem)
        notify([command_id])
        await db.scrub()  # its env was erased
    return changed
