"""The async front of the database: store functions run on worker threads.

Every access goes through :class:`Database`: the event loop hands a synchronous function
``fn(conn, ...)`` (``conn`` a SQLAlchemy :class:`~sqlalchemy.Connection`) to a worker
thread with ``loop.run_in_executor`` and awaits it; the event loop never blocks on the
database.

- SQLite: one worker thread and its one connection, as before Alembic: writes are
  serialized without locks (``BEGIN IMMEDIATE``), and a finished command's env is erased
  from the WAL at once (:meth:`Database.scrub`).
- PostgreSQL: a pool of :data:`~fleetgate.controlplane.store.engine.POSTGRES_POOL_SIZE`
  connections and as many threads (a bounded ``ThreadPoolExecutor``): the store functions
  stay synchronous and shared by both backends, which SQLAlchemy's asyncio extension would
  not allow without making every one of them a coroutine. Transactions are READ
  COMMITTED; a function that reads then writes a row locks it (``with_for_update``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from fleetgate.controlplane.store.engine import (
    IMMEDIATE,
    POSTGRES_POOL_SIZE,
    Backend,
    backend_of,
    check_connection,
    make_engine,
    parse_url,
    sqlite_url,
)
from fleetgate.controlplane.store.migrate import upgrade


__all__ = ["Database", "connect", "open_engine", "transaction"]

P = ParamSpec("P")
T = TypeVar("T")


def open_engine(url: str, *, migrate: bool = True, pooled: bool = True) -> Engine:
    """Check ``url``, connect once and (by default) migrate: the engine, ready
    (``pooled=False``: connections close when released, for one-shot use).

    Raises:
        StoreError: a bad URL, an unreachable server, a refused login, a newer schema.
    """
    engine = make_engine(parse_url(url), pooled=pooled)
    try:
        check_connection(engine)
        if migrate:
            upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def connect(url_or_path: str | Path) -> Connection:
    """A migrated connection for synchronous use (the CLI, tests); a path is a SQLite
    file. ``conn.close()`` closes it (the engine keeps no pool)."""
    text = str(url_or_path)
    url = text if "://" in text else sqlite_url(text)
    return open_engine(url, pooled=False).connect()


@contextmanager
def transaction(conn: Connection) -> Iterator[Connection]:
    """One write transaction on ``conn`` (``BEGIN IMMEDIATE`` on SQLite), committed at
    the end and rolled back on any exception. Reads made before on the connection
    (which began a transaction implicitly) are ended first."""
    if conn.in_transaction():
        conn.commit()
    conn.info[IMMEDIATE] = True
    with conn.begin():
        yield conn


RETRIED_SQLSTATES = frozenset({"40001", "40P01"})
"""PostgreSQL's serialization failure and deadlock: the transaction was rolled back as a
whole and may simply run again."""
WRITE_ATTEMPTS = 3


def _retrying(conn: Connection, body: Callable[[], T]) -> T:
    """``body`` in one write transaction, run again (up to :data:`WRITE_ATTEMPTS` times)
    when PostgreSQL rolled it back for a deadlock or a serialization failure."""
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            with transaction(conn):
                return body()
        except DBAPIError as error:
            sqlstate = getattr(error.orig, "sqlstate", None)
            if sqlstate not in RETRIED_SQLSTATES or attempt == WRITE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


class ErasesEnv(Protocol):
    """A write's result that says whether it erased a command's env."""

    @property
    def erased_env(self) -> bool: ...


E = TypeVar("E", bound=ErasesEnv)


def _scrub(conn: Connection) -> None:
    # TRUNCATE: every frame is copied into the (secure_delete) database file, then the
    # WAL file is cut to zero bytes, old page images included. Run on the driver's
    # connection, outside any transaction (a checkpoint cannot run inside one).
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


class Database:
    """Async front of the database; see the module docstring."""

    def __init__(self, url: str | Path) -> None:
        text = str(url)
        self.url = text if "://" in text else sqlite_url(text)
        self.backend: Backend = backend_of(parse_url(self.url))
        self._engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._conn: Connection | None = None  # SQLite: the worker thread's one connection

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (open)."""
        if self._engine is None:
            raise RuntimeError("the database is not open")
        return self._engine

    async def open(self) -> None:
        """Start the worker thread(s), connect, and migrate the database."""
        workers = 1 if self.backend == "sqlite" else POSTGRES_POOL_SIZE
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="controlplane-db")
        loop = asyncio.get_running_loop()
        try:
            self._engine = await loop.run_in_executor(executor, open_engine, self.url)
            if self.backend == "sqlite":
                self._conn = await loop.run_in_executor(executor, self._engine.connect)
        except BaseException:
            executor.shutdown(wait=True)
            raise
        self._executor = executor

    async def close(self) -> None:
        """Let the calls under way finish (a cancelled await leaves its call running on
        the worker), then close the connections and stop the worker threads."""
        executor, engine, conn = self._executor, self._engine, self._conn
        if executor is None:
            return
        self._executor = None  # no new call from here on
        await asyncio.to_thread(executor.shutdown, wait=True)
        if conn is not None:
            await asyncio.to_thread(conn.close)
        if engine is not None:
            await asyncio.to_thread(engine.dispose)
        self._engine = None
        self._conn = None

    async def read(
        self,
        fn: Callable[Concatenate[Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(conn, *args, **kwargs)`` on a worker thread in a transaction that is
        rolled back (reads only)."""

        def call(conn: Connection) -> T:
            try:
                return fn(conn, *args, **kwargs)
            finally:
                conn.rollback()

        return await self._run(call)

    async def write(
        self,
        fn: Callable[Concatenate[Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in one transaction (``BEGIN IMMEDIATE`` on
        SQLite, READ COMMITTED on PostgreSQL), committed when it returns.

        On PostgreSQL a transaction rolled back for a deadlock or a serialization failure
        runs again: ``fn`` must change nothing outside the database (or reset it first).
        """

        def call(conn: Connection) -> T:
            return _retrying(conn, lambda: fn(conn, *args, **kwargs))

        return await self._run(call)

    async def scrub(self) -> None:
        """SQLite: checkpoint the WAL into the database file and truncate it, after
        erasing a secret (a command's env): the WAL's old frames still hold what was
        overwritten, and ``secure_delete`` zeroes it in the database file. PostgreSQL:
        nothing here (``docs/database.md`` says what erasing means there)."""
        if self.backend == "sqlite":
            await self._run(_scrub)

    async def write_erasing(
        self,
        fn: Callable[Concatenate[Connection, P], E],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> E:
        """:meth:`write`, then :meth:`scrub` in the same turn of the worker when the
        result says it erased a secret: no reader sees the change before the scrub."""
        sqlite = self.backend == "sqlite"

        def call(conn: Connection) -> E:
            result = _retrying(conn, lambda: fn(conn, *args, **kwargs))
            if sqlite and result.erased_env:
                _scrub(conn)
            return result

        return await self._run(call)

    async def _run(self, call: Callable[[Connection], T]) -> T:
        executor = self._executor
        if executor is None:
            raise RuntimeError("the database is not open")
        loop = asyncio.get_running_loop()
        if self._conn is not None:
            return await loop.run_in_executor(executor, call, self._conn)
        return await loop.run_in_executor(executor, partial(self._pooled, call))

    def _pooled(self, call: Callable[[Connection], T]) -> T:
        with self.engine.connect() as conn:
            return call(conn)
