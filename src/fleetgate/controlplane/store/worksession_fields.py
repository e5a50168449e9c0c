"""Changing a work session's fields: a live session's expiry, scopes, servers or sudo
policies (``extend``/``update`` keep the status, ``amend`` sends it back to pending), and
a pending request narrowed before it is approved; each change goes on the timeline with
what it was before and after."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, update

from fleetgate.controlplane.store import tables as t
from fleetgate.controlplane.store.worksessions import (
    WorkSessionRow,
    add_event,
    apply_action,
    load_settled,
)
from fleetgate.controlplane.worksession.lifecycle import Action, InvalidTransition, Status


__all__ = ["adjust_request", "update_fields"]

_w = t.work_sessions.c


def update_fields(
    conn: Connection,
    session_id: str,
    action: Action,
    *,
    actor: int | None,
    now: int,
    event: str,
    expires_at: int | None = None,
    sudo_policies: list[dict[str, Any]] | None = None,
    scopes: tuple[str, ...] | None = None,
    server_ids: tuple[str, ...] | None = None,
) -> WorkSessionRow | None:
    """Change a live session's fields under ``action`` (``extend``/``update`` keep the
    status, ``amend`` sends it back to pending) and record ``event`` on the timeline with
    who changed what, before and after."""
    row = apply_action(conn, session_id, action, actor=actor, now=now)
    if row is None:
        return None
    changes: dict[str, Any] = {}
    columns: dict[str, Any] = {}
    if expires_at is not None:
        changes["expires_at"] = {"before": row.expires_at, "after": expires_at}
        columns["expires_at"] = expires_at
        row = replace(row, expires_at=expires_at)
    if sudo_policies is not None:
        before = list(row.sudo_policies)
        changes["sudo_policies"] = {"before": before, "after": sudo_policies}
        columns["sudo_policies"] = json.dumps(sudo_policies)
        row = replace(row, sudo_policies=tuple(sudo_policies))
    if scopes is not None:
        changes["scopes"] = {"before": list(row.scopes), "after": list(scopes)}
        columns["scopes"] = json.dumps(list(scopes))
        row = replace(row, scopes=scopes)
    if server_ids is not None:
        changes["servers"] = {"before": list(row.server_ids), "after": list(server_ids)}
        columns["servers"] = json.dumps(list(server_ids))
        row = replace(row, server_ids=server_ids)
    if columns:
        conn.execute(
            update(t.work_sessions).where(_w.id == row.id).values(**columns, updated_at=now)
        )
        row = replace(row, updated_at=now)
    data: dict[str, Any] = {"changes": changes, "status": row.status.value}
    # Kept for readers of the older event shapes.
    if expires_at is not None:
        data.update({"from": changes["expires_at"]["before"], "to": expires_at})
    if sudo_policies is not None:
        data["sudo_policies"] = sudo_policies
    add_event(conn, row.id, event, timestamp=now, actor=actor, data=data)
    return row


def adjust_request(
    conn: Connection,
    session_id: str,
    *,
    scopes: tuple[str, ...] | None,
    server_ids: tuple[str, ...] | None,
    actor: int | None,
    now: int,
) -> WorkSessionRow | None:
    """Narrow a pending request's scopes and servers before it is approved.

    Records an ``adjust`` item with what changed. Raises ``InvalidTransition`` (for
    ``approve``) unless the session is still pending.
    """
    row = load_settled(conn, session_id, now=now)
    if row is None:
        return None
    if row.status is not Status.PENDING:
        raise InvalidTransition(row.status, Action.APPROVE)
    data: dict[str, Any] = {}
    if scopes is not None and scopes != row.scopes:
        data["scopes"] = {"from": list(row.scopes), "to": list(scopes)}
        row = replace(row, scopes=scopes)
    if server_ids is not None and server_ids != row.server_ids:
        data["servers"] = {"from": list(row.server_ids), "to": list(server_ids)}
        row = replace(row, server_ids=server_ids)
    if data:
        conn.execute(
            update(t.work_sessions)
            .where(_w.id == row.id)
            .values(
                scopes=json.dumps(list(row.scopes)),
                servers=json.dumps(list(row.server_ids)),
                updated_at=now,
            )
        )
        add_event(conn, row.id, "adjust", timestamp=now, actor=actor, data=data)
    return row
