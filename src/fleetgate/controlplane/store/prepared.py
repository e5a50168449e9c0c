"""Hot statements compiled once per dialect and run on the driver's cursor.

SQLAlchemy's ``Connection.execute`` costs about 15 µs per statement on top of the
driver's 1 µs (execution context, events, result wrapping), whatever its statement
cache: that is most of the control plane's CPU per command, which stores four reports,
polls its stream and inserts its row. A :class:`Prepared` statement is still written
with the Core tables, for both backends, but is compiled once per dialect into the
driver's SQL text and parameter order, and runs on the DBAPI cursor of the same
SQLAlchemy connection, inside the same transaction.

Only statements whose types need no bind or result conversion qualify (every column of
the schema: integers, floats and text); compiling one that does raises at once, as does
an ``IN`` list (``expanding``) parameter. Driver errors are wrapped as SQLAlchemy's
(``IntegrityError``, ``OperationalError``…, parameters hidden: a command's env is one),
so callers and the PostgreSQL retry of :mod:`.db` see the same exceptions as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Float, Integer, String, bindparam
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import Executable
from sqlalchemy.sql.sqltypes import NullType


__all__ = ["IN_LIST_MAX", "Prepared", "PreparedIn"]


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    """Parameter names in the driver's order (positional) or the names it reads."""
    positional: bool
    defaults: Mapping[str, Any]
    """Values of the parameters the statement fixes itself (``values(env="{}")``)."""
    converters: Mapping[str, Callable[[Any], Any]]
    """The dialect's conversion of a parameter's value, where it has one."""


def _compile(stmt: Any, dialect: Dialect) -> _Compiled:
    compiled = stmt.compile(dialect=dialect)
    if compiled.literal_execute_params or compiled.post_compile_params:
        raise ValueError("a prepared statement takes no IN list or literal parameter")
    if getattr(compiled, "escaped_bind_names", None):
        raise ValueError("a prepared statement's parameter names need no escaping")
    defaults: dict[str, Any] = {}
    converters: dict[str, Callable[[Any], Any]] = {}
    for bind, name in compiled.bind_names.items():
        convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if convert is not None:
            converters[name] = convert  # SQLite's float(): the driver gets what it expects
        if bind.required:
            if name != bind.key:
                raise ValueError(f"parameter {bind.key!r} is renamed {name!r}")
        else:
            defaults[name] = bind.effective_value
    for column in getattr(stmt, "selected_columns", ()):
        # Rows are the driver's tuples: only types the driver returns as they are.
        kind = column.type
        if not isinstance(kind, _AS_IS) or getattr(kind, "asdecimal", False):
            raise ValueError(f"column {column!r} needs a conversion ({kind!r})")
    if compiled.positional:
        names = tuple(compiled.positiontup or ())
    else:
        names = tuple(dict.fromkeys(compiled.bind_names.values()))
    return _Compiled(compiled.string, names, compiled.positional, defaults, converters)


_AS_IS = (Integer, String, Float, NullType)
"""Result types the drivers hand back unconverted (``NullType``: a bare ``min()``)."""


class Prepared:
    """A Core statement (or a builder of one per dialect name) run on the driver's
    cursor; see the module docstring. Parameters are passed by bind name."""

    def __init__(self, stmt: Executable | Callable[[str], Executable]) -> None:
        self._stmt = stmt
        self._built: dict[str, _Compiled] = {}
        selected = getattr(stmt, "selected_columns", ())
        self.keys: tuple[str, ...] = tuple(str(column.key) for column in selected)
        """The names of the selected columns (of a statement given as such)."""

    def _for(self, conn: Connection) -> _Compiled:
        dialect = conn.dialect
        built = self._built.get(dialect.name)
        if built is None:
            stmt = self._stmt if isinstance(self._stmt, Executable) else self._stmt(dialect.name)
            built = self._built[dialect.name] = _compile(stmt, dialect)
        return built

    def rows(self, conn: Connection, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Every row, as the driver's tuples."""
        cursor = _run(conn, self._for(conn), params or {})
        try:
            rows: list[Any] = cursor.fetchall()
        finally:
            cursor.close()
        return rows

    def first(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Any:
        """The first row (a tuple) or ``None``."""
        cursor = _run(conn, self._for(conn), params or {})
        try:
            return cursor.fetchone()
        finally:
            cursor.close()

    def mapping(
        self, conn: Connection, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The first row as ``{column key: value}`` (for a ``from_row``), or ``None``."""
        row = self.first(conn, params)
        return None if row is None else dict(zip(self.keys, row, strict=True))

    def mappings(
        self, conn: Connection, params: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Every row as ``{column key: value}``."""
        keys = self.keys
        return [dict(zip(keys, row, strict=True)) for row in self.rows(conn, params)]

    def run(self, conn: Connection, params: Mapping[str, Any] | None = None) -> int:
        """Execute a write; the number of rows it matched."""
        cursor = _run(conn, self._for(conn), params or {})
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def run_many(self, conn: Connection, params: Iterable[Mapping[str, Any]]) -> None:
        """Execute a write once per parameter set (the driver's ``executemany``)."""
        compiled = self._for(conn)
        batch = [_bind(compiled, one) for one in params]
        if batch:
            _call(conn, compiled, batch, many=True).close()


IN_LIST_MAX = 512
"""The most values a :class:`PreparedIn` statement takes at once (callers chunk)."""


class PreparedIn:
    """A statement with one ``IN`` list, prepared for list sizes 1, 2, 4 … 512: a list
    is padded to the next size with its last value (a value repeated in ``IN`` changes
    nothing), so at most ten statements per dialect serve every size.

    ``build(values)`` returns the statement for the bind parameters ``values`` (use them
    as ``column.in_(values)``).
    """

    def __init__(self, build: Callable[[list[Any]], Executable]) -> None:
        self._build = build
        self._sizes: dict[int, Prepared] = {}

    def rows(
        self, conn: Connection, values: Sequence[Any], params: Mapping[str, Any] | None = None
    ) -> list[Any]:
        """Every row for ``values`` (1 to :data:`IN_LIST_MAX` of them) and ``params``."""
        if not 0 < len(values) <= IN_LIST_MAX:
            raise ValueError(f"an IN list of 1 to {IN_LIST_MAX} values, not {len(values)}")
        size = 1 << (len(values) - 1).bit_length()
        prepared = self._sizes.get(size)
        if prepared is None:
            binds: list[Any] = [bindparam(f"in_{i}") for i in range(size)]
            prepared = self._sizes[size] = Prepared(self._build(binds))
        padded = [*values, *[values[-1]] * (size - len(values))]
        merged = {**(params or {}), **{f"in_{i}": value for i, value in enumerate(padded)}}
        return prepared.rows(conn, merged)


def _bind(compiled: _Compiled, params: Mapping[str, Any]) -> Any:
    defaults = compiled.defaults
    values = {name: params[name] if name in params else defaults[name] for name in compiled.names}
    for name, convert in compiled.converters.items():
        if name in values:
            values[name] = convert(values[name])
    if compiled.positional:  # a name used twice is bound twice, in the SQL's order
        return tuple([values[name] for name in compiled.names])
    return values


def _run(conn: Connection, compiled: _Compiled, params: Mapping[str, Any]) -> Any:
    return _call(conn, compiled, _bind(compiled, params), many=False)


def _call(conn: Connection, compiled: _Compiled, bound: Any, *, many: bool) -> Any:
    if not conn.in_transaction():
        # As SQLAlchemy's autobegin would: the statement runs in the connection's
        # transaction (BEGIN on SQLite), which the caller commits or rolls back.
        conn.begin()
    dbapi_conn = conn.connection.dbapi_connection
    assert dbapi_conn is not None
    cursor = dbapi_conn.cursor()
    try:
        if many:
            cursor.executemany(compiled.sql, bound)
        else:
            cursor.execute(compiled.sql, bound)
    except conn.dialect.loaded_dbapi.Error as error:
        _raise_wrapped(conn, compiled, error, cursor, many=many, params=bound)
    return cursor


def _raise_wrapped(
    conn: Connection,
    compiled: _Compiled,
    error: Any,
    cursor: Any,
    *,
    many: bool,
    params: Sequence[Any] | Mapping[str, Any],
) -> None:
    dialect = conn.dialect
    disconnect = bool(dialect.is_disconnect(error, conn.connection.dbapi_connection, cursor))
    with suppress(Exception):  # a broken connection's cursor may fail to close too
        cursor.close()
    wrapped = DBAPIError.instance(
        compiled.sql,
        params,
        error,
        dialect.loaded_dbapi.Error,
        hide_parameters=True,  # a command's env is a parameter
        connection_invalidated=disconnect,
        dialect=dialect,
        ismulti=many,
    )
    if disconnect:
        conn.invalidate(error)
    raise wrapped from error
