"""The work sessions the clock moves: every due start and expiry persisted at once, and
when the next one falls due (what the control plane's work-session clock waits for)."""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, or_, select, text

from fleetgate.controlplane.store import tables as t
from fleetgate.controlplane.store.prepared import Prepared
from fleetgate.controlplane.store.worksessions import WorkSessionRow, load_settled
from fleetgate.controlplane.worksession.lifecycle import Status, next_due


__all__ = ["next_due_at", "settle_all"]

_w = t.work_sessions.c


def settle_all(conn: Connection, *, now: int) -> list[WorkSessionRow]:
    """Persist every due start and expiry; return the sessions that changed."""
    ids = [row[0] for row in _DUE.rows(conn, {"now": now})]
    changed = []
    for session_id in ids:
        row = load_settled(conn, session_id, now=now)
        if row is not None:
            changed.append(row)
    return changed


def next_due_at(conn: Connection) -> int | None:
    """The earliest time a live session starts or expires (``None``: none is live)."""
    times = [
        next_due(Status(r[0]), starts_at=r[1], expires_at=r[2]) for r in _LIVE_TIMES.rows(conn)
    ]
    return min((t for t in times if t is not None), default=None)


# Spelled out (no IN list parameter, which a prepared statement cannot take): it is also
# the condition of the partial index ix_work_sessions_live, which the planners then use.
_LIVE_STATUS = text("work_sessions.status IN ('pending', 'approved', 'active')")
_DUE = Prepared(
    select(_w.id).where(
        _LIVE_STATUS,
        or_(
            _w.expires_at <= bindparam("now"),
            (_w.status == "approved") & (_w.starts_at <= bindparam("now")),
        ),
    )
)
_LIVE_TIMES = Prepared(select(_w.status, _w.starts_at, _w.expires_at).where(_LIVE_STATUS))
