"""Query parsing, SQL building and pagination links of the list endpoints (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Dialect, select
from sqlalchemy.dialects import postgresql, sqlite

from fleetgate.controlplane.api.pagination import page_links
from fleetgate.controlplane.api.params import Page, parse_bool, parse_command_filter, parse_page
from fleetgate.controlplane.errors import APIError
from fleetgate.controlplane.store.queries import (
    ORDERING_FIELDS,
    CommandFilter,
    build_command_query,
    order_by_clause,
)


PG_DIALECT: Dialect = postgresql.dialect()  # type: ignore[no-untyped-call]


def _sql(stmt: Any, dialect: Dialect | None = None) -> tuple[str, dict[str, Any]]:
    """A statement's SQL text (SQLite's unless told) and its bound values."""
    compiled = stmt.compile(dialect=dialect or sqlite.dialect())
    return " ".join(str(compiled).split()), dict(compiled.params)


SID = "7e3984de-49ab-4cc6-bcdf-21fbd35858b8"


def test_defaults() -> None:
    assert parse_command_filter({}) == CommandFilter()
    assert parse_command_filter({}).ordering == "-scheduled_at"
    assert parse_page({}) == Page(1, 15)


def test_every_filter() -> None:
    flt = parse_command_filter(
        {
            "server": SID.upper(),
            "shell": "system",
            "requested_by": "3",
            "requested_by_isnull": "false",
            "is_scheduled": "true",
            "search": "Web",
            "ordering": "-acked_at",
        }
    )
    assert flt == CommandFilter(
        server=SID,
        shell="system",
        requested_by=3,
        requested_by_isnull=False,
        is_scheduled=True,
        search="Web",
        ordering="-acked_at",
    )


def test_empty_values_are_ignored() -> None:
    assert parse_command_filter({"server": "", "search": "", "ordering": ""}) == CommandFilter()


@pytest.mark.parametrize(
    ("params", "source"),
    [
        ({"server": "web-01"}, "server"),
        ({"requested_by": "x"}, "requested_by"),
        ({"requested_by": "-1"}, "requested_by"),
        ({"requested_by_isnull": "maybe"}, "requested_by_isnull"),
        ({"is_scheduled": "yes"}, "is_scheduled"),
        ({"ordering": "line"}, "ordering"),
        ({"ordering": "--added_at"}, "ordering"),
        ({"ordering": "+added_at"}, "ordering"),
        ({"search": "x" * 300}, "search"),
    ],
)
def test_invalid_filters(params: dict[str, str], source: str) -> None:
    with pytest.raises(APIError) as info:
        parse_command_filter(params)
    assert (info.value.status, info.value.code, info.value.source) == (
        400,
        "INVALID_REQUEST",
        source,
    )


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"page": "2"}, Page(2, 15)),
        ({"page_size": "100"}, Page(1, 100)),
        ({"page_size": "1", "page": "7"}, Page(7, 1)),
    ],
)
def test_pages(params: dict[str, str], expected: Page) -> None:
    assert parse_page(params) == expected


@pytest.mark.parametrize(
    "params",
    [
        {"page": "0"},
        {"page": "-1"},
        {"page": "x"},
        {"page": "1.5"},
        {"page_size": "0"},
        {"page_size": "101"},
        {"page_size": "abc"},
        {"page": "9" * 30},
    ],
)
def test_invalid_pages(params: dict[str, str]) -> None:
    with pytest.raises(APIError) as info:
        parse_page(params)
    assert info.value.code == "INVALID_REQUEST"


def test_page_offset() -> None:
    assert Page(3, 20).offset == 40


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("True", True), ("1", True), ("false", False), ("0", False)],
)
def test_parse_bool(value: str, expected: bool) -> None:
    assert parse_bool({"x": value}, "x") is expected


@pytest.mark.parametrize("field", ORDERING_FIELDS)
def test_order_by_every_field(field: str) -> None:
    def order(ordering: str) -> str:
        return _sql(select(1).order_by(*order_by_clause(ordering)))[0].split("ORDER BY ")[1]

    assert (
        order(field) == f"commands.{field} ASC NULLS LAST, commands.added_at DESC, commands.id ASC"
    )
    assert order("-" + field) == (
        f"commands.{field} DESC NULLS LAST, commands.added_at DESC, commands.id ASC"
    )


def test_order_by_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown ordering"):
        order_by_clause("line; DROP TABLE commands")


def test_query_without_filters() -> None:
    q = build_command_query(CommandFilter(), now=5, visible_to=None, limit=15, offset=30)
    text, params = _sql(q.select)
    assert " WHERE " not in text
    assert text.endswith(
        "ORDER BY commands.scheduled_at DESC NULLS LAST, commands.added_at DESC, "
        "commands.id ASC LIMIT ? OFFSET ?"
    )
    assert sorted(params.values()) == [15, 30]
    assert _sql(q.count)[1] == {}


def test_query_with_every_filter() -> None:
    flt = CommandFilter(
        server=SID,
        shell="system",
        requested_by=3,
        requested_by_isnull=False,
        is_scheduled=True,
        search="WeB",
        ordering="added_at",
    )
    q = build_command_query(flt, now=99, visible_to=7, limit=10, offset=0)
    text, params = _sql(q.count)
    where = text.split(" WHERE ", 1)[1]
    assert where.startswith(
        "commands.requested_by = ? AND commands.server_id = ? AND commands.shell = ?"
    )
    assert "commands.requested_by IS NOT NULL" in where
    assert "commands.scheduled_at > ?" in where
    # Both sides are folded by the database: cp_casefold (Python's) on SQLite ...
    assert "instr(cp_casefold(servers.name), cp_casefold(?)) > 0" in where
    assert "instr(cp_casefold(commands.line), cp_casefold(?)) > 0" in where
    assert "instr(cp_casefold(coalesce(u.username, ?)), cp_casefold(?)) > 0" in where
    assert sorted(map(str, params.values())) == sorted(
        map(str, [7, SID, "system", 3, 99, "", "WeB"])
    )
    # ... lower() on PostgreSQL.
    pg_where = _sql(q.count, PG_DIALECT)[0].split(" WHERE ", 1)[1]
    assert "strpos(lower(commands.line), lower(" in pg_where
    assert "cp_casefold" not in pg_where
    assert len(_sql(q.select)[1]) == len(params) + 2  # limit, offset


def test_query_is_scheduled_false_and_isnull_true() -> None:
    flt = CommandFilter(is_scheduled=False, requested_by_isnull=True)
    q = build_command_query(flt, now=42, visible_to=None, limit=1, offset=0)
    text, params = _sql(q.count)
    assert "commands.scheduled_at <= ?" in text
    assert "commands.requested_by IS NULL" in text
    assert list(params.values()) == [42]


def test_values_never_reach_the_sql_text() -> None:
    evil = "'; DROP TABLE commands; --"
    q = build_command_query(
        CommandFilter(search=evil, shell=evil), now=0, visible_to=None, limit=1, offset=0
    )
    text, params = _sql(q.select)
    assert "DROP" not in text
    assert evil in params.values()


BASE = "http://cp.example/api/events/commands/"


def test_links_first_page() -> None:
    assert page_links(BASE, [], Page(1, 15), 85) == (f"{BASE}?page=2", None)


def test_links_middle_page_keeps_other_params() -> None:
    query = [("ordering", "-added_at"), ("page", "3"), ("page_size", "20")]
    nxt, prev = page_links(BASE, query, Page(3, 20), 85)
    assert nxt == f"{BASE}?ordering=-added_at&page_size=20&page=4"
    assert prev == f"{BASE}?ordering=-added_at&page_size=20&page=2"


def test_links_second_page_previous_has_no_page() -> None:
    nxt, prev = page_links(BASE, [("page", "2")], Page(2, 15), 20)
    assert nxt is None
    assert prev == BASE


def test_links_last_and_past_the_end() -> None:
    assert page_links(BASE, [("page", "6")], Page(6, 15), 85) == (None, f"{BASE}?page=5")
    assert page_links(BASE, [("page", "9")], Page(9, 15), 85) == (None, f"{BASE}?page=6")
    assert page_links(BASE, [], Page(1, 15), 0) == (None, None)
    assert page_links(BASE, [], Page(1, 15), 15) == (None, None)
