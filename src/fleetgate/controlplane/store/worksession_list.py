"""The list of work sessions: a page, newest first, filtered and searched.

The usual pages (no search) run statements built once per filter set (see ``prepared``);
a search builds its statement per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, exists, func, literal, or_, select

from fleetgate.controlplane.store import tables as t
from fleetgate.controlplane.store.prepared import Prepared
from fleetgate.controlplane.store.worksession_due import settle_all
from fleetgate.controlplane.store.worksessions import (
    ASSIGNEE,
    CREATOR,
    SESSION_FROM,
    WorkSessionRow,
    session_select,
)


__all__ = ["list_work_sessions"]

_w = t.work_sessions.c


def list_work_sessions(
    conn: Connection,
    *,
    visible_to: int | None,
    status: str | None,
    now: int,
    offset: int,
    limit: int,
    search: str | None = None,
) -> tuple[int, list[WorkSessionRow]]:
    """A page of sessions, newest first (``visible_to``: created by or assigned to).

    ``search`` matches (case-insensitively, as a substring) the purpose, the requester's
    or assignee's username, a server's name, or the start of the id.
    """
    settle_all(conn, now=now)
    if not search:
        # The console's and the API's usual pages: statements built once per filter set.
        listing = _LISTINGS[(visible_to is not None, status is not None)]
        params = {"user": visible_to, "status": status, "most": limit, "skip": offset}
        count = listing.count.first(conn, params)[0]
        return int(count), [WorkSessionRow.from_row(r) for r in listing.page.mappings(conn, params)]
    where = []
    if visible_to is not None:
        where.append(or_(_w.created_by == visible_to, _w.assigned_user == visible_to))
    if status is not None:
        where.append(_w.status == status)
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        server = t.servers.c
        # A server is named in the session's JSON list of ids as '"<id>"' (ids are UUIDs).
        listed = _w.servers.contains(literal('"') + server.id + literal('"'))
        where.append(
            or_(
                _w.description.ilike(pattern, escape="\\"),
                CREATOR.c.username.ilike(pattern, escape="\\"),
                ASSIGNEE.c.username.ilike(pattern, escape="\\"),
                _w.id.ilike(pattern[1:], escape="\\"),
                exists().where(listed, server.name.ilike(pattern, escape="\\")),
            )
        )
    count = conn.execute(select(func.count()).select_from(SESSION_FROM).where(*where)).scalar_one()
    stmt = (
        session_select()
        .where(*where)
        .order_by(_w.added_at.desc(), _w.id)
        .limit(limit)
        .offset(offset)
    )
    return int(count), [WorkSessionRow.from_row(r) for r in conn.execute(stmt).mappings()]


@dataclass(frozen=True)
class _Listing:
    count: Prepared
    page: Prepared


def _listing(by_user: bool, by_status: bool) -> _Listing:
    where = []
    if by_user:
        user: Any = bindparam("user")
        where.append(or_(_w.created_by == user, _w.assigned_user == user))
    if by_status:
        where.append(_w.status == bindparam("status"))
    page = (
        session_select()
        .where(*where)
        .order_by(_w.added_at.desc(), _w.id)
        .limit(bindparam("most"))
        .offset(bindparam("skip"))
    )
    return _Listing(
        Prepared(select(func.count()).select_from(SESSION_FROM).where(*where)), Prepared(page)
    )


_LISTINGS = {
    (by_user, by_status): _listing(by_user, by_status)
    for by_user in (False, True)
    for by_status in (False, True)
}
