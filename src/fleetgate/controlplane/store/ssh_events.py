"""What users did over SSH (``ssh.event`` reports), on their work session's timeline.

Each event lands once (``event_id``) as a timeline item of the scope it used: ``command``
for an exec (``ssh host cmd``, ``rsync``, Ansible), ``webftp`` for an SFTP transfer,
``websh`` for a shell (whose terminal row is created here, so that its recording, which
the agent ships when the shell ends, is stored and plays like a websh terminal's),
``tunnel`` for ``ssh -L``; a refusal is an item of type ``ssh`` with ``denied: true``.
Every item's ``data`` has ``"via": "ssh"`` and the SSH connection's id.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from fleetgate.controlplane.store import (
    tables as t,
    terminals as terminals_store,
    worksessions as sessions_store,
)
from fleetgate.controlplane.store.sql import json_text
from fleetgate.controlplane.store.ssh import get_connection
from fleetgate.controlplane.timeutil import to_us
from fleetgate.shared.protocol import SshEvent
from fleetgate.shared.protocol.ssh import SSH_SCOPES


__all__ = ["store_ssh_event"]


def store_ssh_event(conn: Connection, server_id: str, report: SshEvent) -> None:
    """Store one event (inside the caller's transaction); duplicates and events about a
    connection that is not this server's are dropped (and still confirmed)."""
    row = get_connection(conn, str(report.channel_id))
    if row is None or row.server_id != server_id:
        return
    at = to_us(report.at)
    new_terminal = report.op == "shell" and report.terminal_id is not None
    if new_terminal and terminals_store.get_terminal(conn, str(report.terminal_id)) is None:
        terminals_store.insert_terminal(
            conn,
            terminal_id=str(report.terminal_id),
            server_id=server_id,
            username=row.username,
            groupname=None,
            shell=None,
            rows=24,
            cols=80,
            work_session_id=row.work_session_id,
            owner_user=row.owner_user,
            owner_token=row.owner_token,
            now=at,
        )
    session_id = row.work_session_id
    if session_id is None:
        return  # a token's connection: no work session, no timeline
    event_id = str(report.event_id)
    ev = t.work_session_events.c
    seen = conn.execute(
        select(ev.id).where(ev.session_id == session_id, json_text(ev.data, "event_id") == event_id)
    ).first()
    if seen is not None:
        return
    data: dict[str, Any] = {
        "via": "ssh",
        "event_id": event_id,
        "connection": row.id,
        "user": report.user,
    }
    if report.op == "exec":
        data.update(line=report.detail, exit_code=report.exit_code, elapsed=report.elapsed)
    elif report.op == "sftp":
        data.update(
            description=report.detail,
            path=report.path,
            bytes_read=report.bytes_read,
            bytes_written=report.bytes_written,
        )
    elif report.op == "shell":
        data.update(description=report.detail, terminal_id=str(report.terminal_id))
    elif report.op == "refused":
        data.update(denied=True, code=report.code, detail=report.detail)
    else:
        data.update(description=report.detail)
    sessions_store.add_event(
        conn,
        session_id,
        SSH_SCOPES.get(report.op, "ssh"),
        timestamp=at,
        actor=row.owner_user,
        server_id=server_id,
        data=data,
    )
