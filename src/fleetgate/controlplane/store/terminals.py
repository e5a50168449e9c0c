"""Terminal sessions (websh): who opened which shell where, and its recording.

A terminal row is created by ``POST /api/websh/terminals/`` (status ``created``), becomes
``open`` when the agent first attached a channel to it, and ``closed`` when its shell
ended or it was closed. Its recording arrives from the agent after the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, Select, bindparam, case, func, select, update

from fleetgate.controlplane.store import tables as t
from fleetgate.controlplane.store.owners import owned_by
from fleetgate.controlplane.store.prepared import Prepared


__all__ = [
    "TerminalRow",
    "closed_unrecorded",
    "get_terminal",
    "insert_terminal",
    "list_terminals",
    "mark_attached",
    "mark_closed",
    "open_terminals_of",
    "set_recording",
]

TerminalStatus = Literal["created", "open", "closed"]


@dataclass(frozen=True)
class TerminalRow:
    """One terminal."""

    id: str
    server_id: str
    server_name: str
    username: str
    groupname: str | None
    shell: str | None
    rows: int
    cols: int
    work_session_id: str | None
    owner_user: int | None
    owner_token: str
    status: TerminalStatus
    channel_id: str | None
    attaches: int
    created_at: int
    closed_at: int | None
    close_reason: str | None
    recording_size: int | None
    recording_sha256: str | None
    recorded_at: int | None


_t = t.terminals.c


def _select() -> Select[Any]:
    return select(t.terminals, t.servers.c.name.label("server_name")).select_from(
        t.terminals.join(t.servers, t.servers.c.id == _t.server_id)
    )


def _row(row: Mapping[Any, Any]) -> TerminalRow:
    return TerminalRow(**{name: row[name] for name in TerminalRow.__dataclass_fields__})


def insert_terminal(
    conn: Connection,
    *,
    terminal_id: str,
    server_id: str,
    username: str,
    groupname: str | None,
    shell: str | None,
    rows: int,
    cols: int,
    work_session_id: str | None,
    owner_user: int | None,
    owner_token: str,
    now: int,
) -> None:
    """Store a new terminal (status ``created``)."""
    conn.execute(
        t.terminals.insert().values(
            id=terminal_id,
            server_id=server_id,
            username=username,
            groupname=groupname,
            shell=shell,
            rows=rows,
            cols=cols,
            work_session_id=work_session_id,
            owner_user=owner_user,
            owner_token=owner_token,
            status="created",
            created_at=now,
        )
    )


def get_terminal(conn: Connection, terminal_id: str) -> TerminalRow | None:
    """One terminal, or None."""
    row = conn.execute(_select().where(_t.id == terminal_id)).mappings().first()
    return None if row is None else _row(row)


def list_terminals(
    conn: Connection,
    *,
    owner_user: int | None = None,
    owner_token: str | None = None,
    work_session_id: str | None = None,
    server_id: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[TerminalRow], int]:
    """Terminals, newest first, with the total count; every given filter applies."""
    values = (owner_user, owner_token, work_session_id, server_id)
    count, page = _listing(tuple(value is not None for value in values))
    params = dict(zip(_FILTERS, values, strict=True)) | {"most": limit, "skip": offset}
    total = count.first(conn, params)[0]
    return [_row(r) for r in page.mappings(conn, params)], int(total)


_FILTERS = ("owner_user", "owner_token", "work_session_id", "server_id")
_LISTINGS: dict[tuple[bool, ...], tuple[Prepared, Prepared]] = {}
"""The list's statements per set of filters given (at most 16), built at first use."""


def _listing(given: tuple[bool, ...]) -> tuple[Prepared, Prepared]:
    found = _LISTINGS.get(given)
    if found is None:
        where = [
            _t[name] == bindparam(name) for name, on in zip(_FILTERS, given, strict=True) if on
        ]
        page = (
            _select()
            .where(*where)
            .order_by(_t.created_at.desc(), _t.id)
            .limit(bindparam("most"))
            .offset(bindparam("skip"))
        )
        count = select(func.count()).select_from(t.terminals).where(*where)
        found = _LISTINGS[given] = (Prepared(count), Prepared(page))
    return found


def mark_attached(conn: Connection, terminal_id: str, channel_id: str) -> None:
    """A channel of the terminal is now relayed (the first one opens it)."""
    conn.execute(
        update(t.terminals)
        .where(_t.id == terminal_id)
        .values(
            status=case((_t.status == "created", "open"), else_=_t.status),
            channel_id=channel_id,
            attaches=_t.attaches + 1,
        )
    )


def mark_closed(conn: Connection, terminal_id: str, *, reason: str, now: int) -> bool:
    """The terminal ended; False when it already had."""
    cursor = conn.execute(
        update(t.terminals)
        .where(_t.id == terminal_id, _t.status != "closed")
        .values(status="closed", closed_at=now, close_reason=reason[:200])
    )
    return cursor.rowcount > 0


def open_terminals_of(
    conn: Connection,
    *,
    token_id: str | None = None,
    user_id: int | None = None,
    work_session_id: str | None = None,
) -> list[TerminalRow]:
    """The terminals not ended that were created with ``token_id``, by ``user_id`` or
    under ``work_session_id`` (any of them; ``NULL`` never matches)."""
    owned = owned_by(
        t.terminals, token_id=token_id, user_id=user_id, work_session_id=work_session_id
    )
    if owned is None:
        return []
    stmt = _select().where(_t.status != "closed", owned)
    return [_row(r) for r in conn.execute(stmt).mappings()]


def closed_unrecorded(
    conn: Connection, server_id: str, *, since: int, limit: int = 1000
) -> list[tuple[str, str]]:
    """``(id, close_reason)`` of the terminals of ``server_id`` closed since ``since``
    whose recording has not arrived: their shell may still run on the agent."""
    rows = _CLOSED_UNRECORDED.rows(conn, {"sid": server_id, "since": since, "most": limit})
    return [(str(r[0]), str(r[1])) for r in rows]


# Every agent's hello reads it (compiled once per dialect, see ``prepared``).
_CLOSED_UNRECORDED = Prepared(
    select(_t.id, func.coalesce(_t.close_reason, "closed"))
    .where(
        _t.server_id == bindparam("sid"),
        _t.status == "closed",
        _t.recorded_at.is_(None),
        _t.closed_at >= bindparam("since"),
    )
    .order_by(_t.closed_at)
    .limit(bindparam("most"))
)


def set_recording(conn: Connection, terminal_id: str, *, size: int, sha256: str, now: int) -> None:
    """The terminal's recording is stored (it arrives after the end)."""
    conn.execute(
        update(t.terminals)
        .where(_t.id == terminal_id)
        .values(
            recording_size=size,
            recording_sha256=sha256,
            recorded_at=now,
            status="closed",
            closed_at=func.coalesce(_t.closed_at, now),
        )
    )
