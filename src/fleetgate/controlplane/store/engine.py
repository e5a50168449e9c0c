"""The database URL and the SQLAlchemy engine: SQLite (the embedded default) or
PostgreSQL (psycopg 3), each with the connection settings the control plane relies on.

A URL's password never reaches a log line or an error message: :func:`safe_url` renders
it masked, and every error raised here is built from that form.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from fleetgate.shared.errors import FleetgateError


__all__ = [
    "Backend",
    "DatabaseUnavailable",
    "InvalidDatabaseUrl",
    "StoreError",
    "backend_of",
    "check_connection",
    "make_engine",
    "parse_url",
    "safe_url",
    "sqlite_url",
]

Backend = Literal["sqlite", "postgresql"]

POSTGRES_POOL_SIZE = 8
"""Connections (and worker threads) of one control plane on PostgreSQL."""
CONNECT_TIMEOUT = 10
"""Seconds to wait for a PostgreSQL server before giving up (start, reconnect)."""
SQLITE_BUSY_MS = 30_000


class StoreError(FleetgateError):
    """The database cannot be used (root of the store's deliberate errors)."""


class InvalidDatabaseUrl(StoreError):
    """The configured ``database_url`` is not a URL the control plane can use."""


class DatabaseUnavailable(StoreError):
    """The database server cannot be reached, refused the login, or the file cannot be
    opened."""


def sqlite_url(path: Path | str) -> str:
    """The SQLAlchemy URL of the SQLite file at ``path`` (``:memory:`` stays in memory)."""
    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


def parse_url(raw: str) -> URL:
    """Check and normalize a database URL: ``sqlite:///path`` or
    ``postgresql[+psycopg]://user:password@host:port/database``.

    Raises:
        InvalidDatabaseUrl: not a URL, or another database or driver.
    """
    try:
        url = make_url(raw)
    except exc.ArgumentError:
        # The text may hold a password: say what is wrong, not what was given.
        raise InvalidDatabaseUrl(
            "database_url is not a URL (sqlite:///path or postgresql+psycopg://user@host/db)"
        ) from None
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        if not url.database:
            raise InvalidDatabaseUrl("database_url: a sqlite URL needs a file (sqlite:///path)")
        return url.set(drivername="sqlite")
    if url.drivername in ("postgresql", "postgresql+psycopg"):
        if not url.database:
            raise InvalidDatabaseUrl(f"database_url {safe_url(url)}: name the database")
        return url.set(drivername="postgresql+psycopg")
    raise InvalidDatabaseUrl(
        f"database_url {safe_url(url)}: unsupported database {url.drivername!r} "
        "(sqlite or postgresql+psycopg)"
    )


def safe_url(url: URL | str) -> str:
    """``url`` with its password masked, for logs and errors."""
    if isinstance(url, str):
        try:
            url = make_url(url)
        except exc.ArgumentError:
            return "<invalid database URL>"
    return url.render_as_string(hide_password=True)


def backend_of(url: URL) -> Backend:
    """``sqlite`` or ``postgresql``."""
    return "sqlite" if url.get_backend_name() == "sqlite" else "postgresql"


def make_engine(url: URL, *, pooled: bool = True) -> Engine:
    """An engine for ``url`` (from :func:`parse_url`); no connection is made yet.

    ``pooled=False``: each connection is closed when released (one-shot use: the CLI).
    """
    if backend_of(url) == "sqlite":
        return _sqlite_engine(url, pooled)
    pool: dict[str, Any] = (
        {"pool_size": POSTGRES_POOL_SIZE, "max_overflow": 0, "pool_timeout": 60}
        if pooled
        else {"poolclass": NullPool}
    )
    return create_engine(
        url,
        pool_pre_ping=True,  # a restarted server costs one failed ping, not a failed call
        isolation_level="READ COMMITTED",
        connect_args={"connect_timeout": CONNECT_TIMEOUT, "application_name": "fleetgate"},
        **pool,
    )


def _sqlite_engine(url: URL, pooled: bool) -> Engine:
    database = url.database or ""
    if database != ":memory:" and not database.startswith("file:"):
        file = Path(database)
        if not file.exists():
            # Mode 0600 from the start: the file holds command environments until the
            # commands finish; SQLite gives its -wal and -shm files the same mode.
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(file, os.O_WRONLY | os.O_CREAT, 0o600))
            except OSError as error:
                raise DatabaseUnavailable(
                    f"cannot create the database file {file}: {error.strerror}"
                ) from None
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_MS / 1000},
        **({} if pooled else {"poolclass": NullPool}),
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # The driver's own transaction handling is off: SQLAlchemy's "begin" event below
    # emits BEGIN (IMMEDIATE for writes) itself.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        "foreign_keys=ON",
        f"busy_timeout={SQLITE_BUSY_MS}",
        # Deleted and overwritten content (a finished command's env) is zeroed on disk.
        "secure_delete=ON",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()
    dbapi_conn.create_function("cp_casefold", 1, _casefold, deterministic=True)


def _casefold(value: object) -> str | None:
    return None if value is None else str(value).casefold()


IMMEDIATE = "fleetgate.immediate"
"""``Connection.info`` key: the next transaction on this SQLite connection writes."""


def _sqlite_begin(conn: Any) -> None:
    # A write takes the write lock at BEGIN: two writers never both read and then fail to
    # upgrade (SQLITE_BUSY), they queue on busy_timeout instead.
    # On the driver's connection: exec_driver_sql would cost SQLAlchemy's whole execution
    # path for a statement that has no parameters and no result.
    immediate = conn.info.pop(IMMEDIATE, False)
    conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")


def check_connection(engine: Engine) -> None:
    """Connect once: a wrong host, port, password or file becomes one clear line.

    Raises:
        DatabaseUnavailable: the reason, with the URL's password masked.
    """
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
            conn.rollback()
    except exc.DBAPIError as error:
        reason = str(error.orig).strip().splitlines()
        detail = reason[0] if reason else type(error.orig).__name__
        raise DatabaseUnavailable(
            f"cannot use the database {safe_url(engine.url)}: {detail}"
        ) from None
