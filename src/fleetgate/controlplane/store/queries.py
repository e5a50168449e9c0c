"""Pure query building for the command list: filters, visibility and ordering.

No I/O here: :func:`build_command_query` returns SQLAlchemy Core statements, unit-tested
without a database by compiling them. Only whitelisted column names are ever chosen by
input; every value is a bound parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, func, literal, select
from sqlalchemy.sql.elements import UnaryExpression

from fleetgate.controlplane.store import tables as t
from fleetgate.controlplane.store.sql import casefold, contains


__all__ = [
    "COMMAND_FROM",
    "DEFAULT_ORDERING",
    "ORDERING_FIELDS",
    "CommandFilter",
    "CommandQuery",
    "build_command_query",
    "command_select",
    "order_by_clause",
]

ORDERING_FIELDS = ("added_at", "scheduled_at", "delivered_at", "acked_at", "handled_at")
DEFAULT_ORDERING = "-scheduled_at"

_c = t.commands.c
_requester = t.users.alias("u")

COMMAND_FROM = t.commands.join(t.servers, t.servers.c.id == _c.server_id).outerjoin(
    _requester, _requester.c.id == _c.requested_by
)
"""Commands with their server and (maybe) their requester."""


def command_select() -> Select[Any]:
    """Every command column, its server's name and its requester's username and email
    (what :meth:`CommandRow.from_row` reads), from :data:`COMMAND_FROM`."""
    return select(
        t.commands,
        t.servers.c.name.label("server_name"),
        _requester.c.username.label("requester_username"),
        _requester.c.email.label("requester_email"),
    ).select_from(COMMAND_FROM)


@dataclass(frozen=True)
class CommandFilter:
    """The list filters of ``GET /api/events/commands/`` (``None``: not filtered)."""

    server: str | None = None
    shell: str | None = None
    requested_by: int | None = None
    requested_by_isnull: bool | None = None
    is_scheduled: bool | None = None
    search: str | None = None
    ordering: str = DEFAULT_ORDERING


@dataclass(frozen=True)
class CommandQuery:
    """A SELECT for one page and the COUNT over the same rows."""

    select: Select[Any]
    count: Select[Any]


def order_by_clause(ordering: str) -> list[UnaryExpression[Any]]:
    """The ``ORDER BY`` terms for ``ordering`` (a field, optionally ``-``-prefixed).

    NULLs (a command not yet delivered, acked or handled) sort last in both directions;
    ties are broken by ``-added_at`` then ``id``.

    Raises:
        ValueError: not one of :data:`ORDERING_FIELDS`.
    """
    descending = ordering.startswith("-")
    field = ordering[1:] if descending else ordering
    if field not in ORDERING_FIELDS:
        raise ValueError(f"unknown ordering field {field!r}")
    column = _c[field]
    first = column.desc() if descending else column.asc()
    return [first.nulls_last(), _c.added_at.desc(), _c.id.asc()]


def build_command_query(
    flt: CommandFilter,
    *,
    now: int,
    visible_to: int | None,
    limit: int,
    offset: int,
) -> CommandQuery:
    """The statements for one page of commands.

    Args:
        flt: the parsed filters.
        now: the current time (microseconds) for ``is_scheduled``.
        visible_to: restrict to commands requested by this user id (non-superusers).
        limit: page size.
        offset: rows to skip.
    """
    where: list[ColumnElement[bool]] = []
    if visible_to is not None:
        where.append(_c.requested_by == visible_to)
    if flt.server is not None:
        where.append(_c.server_id == flt.server)
    if flt.shell is not None:
        where.append(_c.shell == flt.shell)
    if flt.requested_by is not None:
        where.append(_c.requested_by == flt.requested_by)
    if flt.requested_by_isnull is not None:
        isnull = flt.requested_by_isnull
        where.append(_c.requested_by.is_(None) if isnull else _c.requested_by.is_not(None))
    if flt.is_scheduled is not None:
        where.append(_c.scheduled_at > now if flt.is_scheduled else _c.scheduled_at <= now)
    if flt.search:
        # The database folds both sides (``sql.casefold``): "É" finds "é" on either backend.
        needle = casefold(literal(flt.search))
        where.append(
            contains(casefold(t.servers.c.name), needle)
            | contains(casefold(_c.line), needle)
            | contains(casefold(func.coalesce(_requester.c.username, "")), needle)
        )
    page = command_select().where(*where).order_by(*order_by_clause(flt.ordering))
    count = select(func.count()).select_from(COMMAND_FROM).where(*where)
    return CommandQuery(page.limit(limit).offset(offset), count)
