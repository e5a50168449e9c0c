"""Portable SQL pieces the two backends spell differently, as SQLAlchemy constructs
compiled per dialect, and the helpers that pick a dialect's statement at run time.

- :func:`casefold`: Unicode case folding for searches. SQLite has no Unicode-aware
  ``lower()``, so the control plane registers ``cp_casefold`` (Python's ``str.casefold``)
  on each connection; PostgreSQL's ``lower()`` follows the database's ``LC_CTYPE``
  (Unicode in a UTF-8 locale). Both sides of a comparison go through it, so a search
  matches the same rows whichever backend folds.
- :func:`contains`: a substring test without ``LIKE`` (no wildcard to escape).
- :func:`json_text`: one top-level field of a JSON text column, as text.
- :func:`insert_ignore`: ``INSERT … ON CONFLICT DO NOTHING`` in the connection's dialect.
- :func:`advisory_xact_lock`: a transaction-scoped lock on PostgreSQL; nothing on SQLite,
  where every write transaction is serialized already (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table, literal_column, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.types import Boolean, Text


__all__ = [
    "advisory_xact_lock",
    "casefold",
    "contains",
    "insert_ignore",
    "insert_ignoring",
    "json_text",
]


class _Casefold(FunctionElement[str]):
    type = Text()
    inherit_cache = True
    name = "casefold"


@compiles(_Casefold)
def _casefold_default(element: _Casefold, compiler: Any, **kw: Any) -> str:
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(_Casefold, "sqlite")
def _casefold_sqlite(element: _Casefold, compiler: Any, **kw: Any) -> str:
    return f"cp_casefold({compiler.process(element.clauses, **kw)})"


def casefold(expr: ColumnElement[Any] | str) -> ColumnElement[str]:
    """``expr`` case-folded by the database (see the module docstring)."""
    return _Casefold(expr)


class _Contains(FunctionElement[bool]):
    type = Boolean()
    inherit_cache = True
    name = "contains"


@compiles(_Contains)
def _contains_default(element: _Contains, compiler: Any, **kw: Any) -> str:
    haystack, needle = list(element.clauses)
    return f"(strpos({compiler.process(haystack, **kw)}, {compiler.process(needle, **kw)}) > 0)"


@compiles(_Contains, "sqlite")
def _contains_sqlite(element: _Contains, compiler: Any, **kw: Any) -> str:
    haystack, needle = list(element.clauses)
    return f"(instr({compiler.process(haystack, **kw)}, {compiler.process(needle, **kw)}) > 0)"


def contains(haystack: ColumnElement[str], needle: ColumnElement[str]) -> ColumnElement[bool]:
    """Whether ``needle`` occurs in ``haystack`` (plain substring, no pattern)."""
    return _Contains(haystack, needle)


class _JsonText(FunctionElement[str]):
    type = Text()
    inherit_cache = True
    name = "json_text"


@compiles(_JsonText)
def _json_text_pg(element: _JsonText, compiler: Any, **kw: Any) -> str:
    column, key = list(element.clauses)
    return f"(CAST({compiler.process(column, **kw)} AS jsonb) ->> {compiler.process(key, **kw)})"


@compiles(_JsonText, "sqlite")
def _json_text_sqlite(element: _JsonText, compiler: Any, **kw: Any) -> str:
    column, key = list(element.clauses)
    return f"json_extract({compiler.process(column, **kw)}, '$.' || {compiler.process(key, **kw)})"


def json_text(column: ColumnElement[str], key: str) -> ColumnElement[str]:
    """The top-level field ``key`` (a fixed identifier, inlined) of the JSON object in
    ``column``, as text."""
    if not key.isidentifier():
        raise ValueError(f"not a JSON field name: {key!r}")
    return _JsonText(column, literal_column(f"'{key}'"))


def insert_ignore(conn: Connection, table: Table) -> Any:
    """``INSERT`` into ``table`` that skips a row whose key exists (``ON CONFLICT DO
    NOTHING``), in ``conn``'s dialect; chain ``.values()`` and ``.returning()``."""
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    return dialect.insert(table).on_conflict_do_nothing()


def insert_ignoring(table: Table, dialect: str) -> Any:
    """:func:`insert_ignore` of ``table`` for the dialect named ``dialect`` (for
    :class:`~fleetgate.controlplane.store.prepared.Prepared`)."""
    module = sqlite if dialect == "sqlite" else postgresql
    return module.insert(table).on_conflict_do_nothing()


def advisory_xact_lock(conn: Connection, key: int) -> None:
    """Hold lock ``key`` until the transaction ends (PostgreSQL); SQLite writes are
    serialized by ``BEGIN IMMEDIATE`` already, so there it does nothing."""
    if conn.dialect.name != "sqlite":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
