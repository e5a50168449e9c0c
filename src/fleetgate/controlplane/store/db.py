"""The one SQLite connection, owned by one dedicated worker thread.

Every access goes through :class:`Database`: the event loop hands a synchronous function
to the worker thread with ``loop.run_in_executor`` and awaits it. With a single thread
the writes are serialized without locks, the connection is never shared between threads,
and the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from fleetgate.controlplane.store.schema import migrate


__all__ = ["Database", "connect", "transaction"]

P = ParamSpec("P")
T = TypeVar("T")


def _casefold(value: object) -> str | None:
    return None if value is None else str(value).casefold()


def connect(path: Path | str) -> sqlite3.Connection:
    """Open ``path`` with the pragmas the control plane relies on, and migrate it.

    The connection is in autocommit mode; :func:`transaction` groups statements. A new
    database file is created with mode 0600 (it holds command environments until the
    commands finish); SQLite gives its ``-wal`` and ``-shm`` files the same mode.
    """
    file = Path(path)
    if str(path) != ":memory:" and not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(file, os.O_WRONLY | os.O_CREAT, 0o600))
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    # Deleted and overwritten content (a finished command's env) is zeroed on disk.
    conn.execute("PRAGMA secure_delete=ON")
    conn.create_function("cp_casefold", 1, _casefold, deterministic=True)
    migrate(conn)
    return conn


class ErasesEnv(Protocol):
    """A write's result that says whether it erased a command's env."""

    @property
    def erased_env(self) -> bool: ...


E = TypeVar("E", bound=ErasesEnv)


def _scrub(conn: sqlite3.Connection) -> None:
    # TRUNCATE: every frame is copied into the (secure_delete) database file, then the
    # WAL file is cut to zero bytes, old page images included.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Database:
    """Async front of the SQLite connection; see the module docstring."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Start the worker thread and open (and migrate) the database in it."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="controlplane-db")
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._executor, connect, self.path)

    async def close(self) -> None:
        """Close the connection and stop the worker thread."""
        executor, conn = self._executor, self._conn
        if executor is None:
            return
        if conn is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)
        self._executor = None
        self._conn = None

    async def read(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(conn, *args, **kwargs)`` on the worker thread (no transaction)."""
        return await self._run(partial(fn, self._connection(), *args, **kwargs))

    async def write(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in one ``BEGIN IMMEDIATE`` transaction."""
        conn = self._connection()

        def in_transaction() -> T:
            with transaction(conn):
                return fn(conn, *args, **kwargs)

        return await self._run(in_transaction)

    async def scrub(self) -> None:
        """Checkpoint the WAL into the database file and truncate it, after erasing a
        secret (a command's env): the WAL's old frames still hold what was overwritten,
        and ``secure_delete`` zeroes it in the database file."""
        await self._run(partial(_scrub, self._connection()))

    async def write_erasing(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], E],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> E:
        """:meth:`write`, then :meth:`scrub` in the same turn of the worker when the
        result says it erased a secret: no reader sees the change before the scrub."""
        conn = self._connection()

        def in_transaction() -> E:
            with transaction(conn):
                result = fn(conn, *args, **kwargs)
            if result.erased_env:
                _scrub(conn)
            return result

        return await self._run(in_transaction)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the database is not open")
        return self._conn

    async def _run(self, call: Callable[[], T]) -> T:
        if self._executor is None:
            raise RuntimeError("the database is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, call)
