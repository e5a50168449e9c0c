"""Pure SQL building for the command list: filters, visibility and ordering.

No I/O here: :func:`build_command_query` returns SQL text and parameters, unit-tested
without a database. Only whitelisted column names ever reach the SQL text; every value
is a bound parameter.
"""

from __future__ import annotations

from dataclasses import dataclass


__all__ = [
    "COMMAND_FROM",
    "DEFAULT_ORDERING",
    "ORDERING_FIELDS",
    "CommandFilter",
    "SqlQuery",
    "build_command_query",
    "order_by_clause",
]

ORDERING_FIELDS = ("added_at", "scheduled_at", "delivered_at", "acked_at", "handled_at")
DEFAULT_ORDERING = "-scheduled_at"

COMMAND_COLUMNS = (
    "c.*, s.name AS server_name, u.username AS requester_username, u.email AS requester_email"
)
COMMAND_FROM = (
    "commands c JOIN servers s ON s.id = c.server_id LEFT JOIN users u ON u.id = c.requested_by"
)


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
class SqlQuery:
    """A SELECT for one page and the COUNT over the same rows."""

    select: str
    select_params: tuple[object, ...]
    count: str
    count_params: tuple[object, ...]


def order_by_clause(ordering: str) -> str:
    """``ORDER BY`` for ``ordering`` (a field, optionally ``-``-prefixed).

    NULLs (a command not yet delivered, acked or handled) sort last in both directions;
    ties are broken by ``-added_at`` then ``id``.

    Raises:
        ValueError: not one of :data:`ORDERING_FIELDS`.
    """
    descending = ordering.startswith("-")
    field = ordering[1:] if descending else ordering
    if field not in ORDERING_FIELDS:
        raise ValueError(f"unknown ordering field {field!r}")
    direction = "DESC" if descending else "ASC"
    return f"ORDER BY c.{field} {direction} NULLS LAST, c.added_at DESC, c.id ASC"


def build_command_query(
    flt: CommandFilter,
    *,
    now: int,
    visible_to: int | None,
    limit: int,
    offset: int,
) -> SqlQuery:
    """The SQL for one page of commands.

    Args:
        flt: the parsed filters.
        now: the current time (microseconds) for ``is_scheduled``.
        visible_to: restrict to commands requested by this user id (non-superusers).
        limit: page size.
        offset: rows to skip.
    """
    where: list[str] = []
    params: list[object] = []
    if visible_to is not None:
        where.append("c.requested_by = ?")
        params.append(visible_to)
    if flt.server is not None:
        where.append("c.server_id = ?")
        params.append(flt.server)
    if flt.shell is not None:
        where.append("c.shell = ?")
        params.append(flt.shell)
    if flt.requested_by is not None:
        where.append("c.requested_by = ?")
        params.append(flt.requested_by)
    if flt.requested_by_isnull is not None:
        where.append(f"c.requested_by IS {'' if flt.requested_by_isnull else 'NOT '}NULL")
    if flt.is_scheduled is not None:
        where.append("c.scheduled_at > ?" if flt.is_scheduled else "c.scheduled_at <= ?")
        params.append(now)
    if flt.search:
        needle = flt.search.casefold()
        where.append(
            "(instr(cp_casefold(s.name), ?) > 0 OR instr(cp_casefold(c.line), ?) > 0 "
            "OR instr(cp_casefold(COALESCE(u.username, '')), ?) > 0)"
        )
        params.extend([needle, needle, needle])
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    order = order_by_clause(flt.ordering)
    select = f"SELECT {COMMAND_COLUMNS} FROM {COMMAND_FROM}{clause} {order} LIMIT ? OFFSET ?"  # noqa: S608
    count = f"SELECT COUNT(*) FROM {COMMAND_FROM}{clause}"  # noqa: S608
    return SqlQuery(select, (*params, limit, offset), count, tuple(params))
