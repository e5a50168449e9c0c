"""The asyncio front of the spool store: one worker thread, group commits.

Callers change the open :class:`~fleetgate.agent.spool.batch.Batch` synchronously (in the event
loop, so the order of changes is the order of events) and either go on at once
(:meth:`Spool.stage`: confirmations, whose loss only means a report is sent twice) or
wait until the change is on disk (:meth:`Spool.commit`). :meth:`Spool.run` writes the
open batch on the worker thread while the next one fills up: under load a commit carries
hundreds of changes, when idle a commit is written at once.

Not every change needs its own write. A staged change, and a commit given ``within``
seconds, waits for the next immediate commit or for its deadline, whichever comes first:
a short command's "started" report rides with its final report, and confirmations with
whatever is written next, so that a command costs two fsyncs instead of five.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from uuid import UUID

import structlog

from fleetgate.agent.errors import StateDirError
from fleetgate.agent.spool.batch import Batch
from fleetgate.agent.spool.store import Snapshot, SpoolStore
from fleetgate.shared.protocol import CommandFinished


__all__ = ["SPOOL_FILE", "Spool"]

SPOOL_FILE = "spool.db"
"""The database's name in the state directory."""

STAGE_DELAY = 0.2
"""Seconds a staged change (a confirmation) may wait for a commit to take it along."""

T = TypeVar("T")

log = structlog.get_logger(__name__)


class Spool:
    """Durable inbox and outbox, written in batches by one worker thread."""

    def __init__(self, store: SpoolStore, executor: ThreadPoolExecutor) -> None:
        self._store = store
        self._executor = executor
        self._batch = Batch()
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._immediate = False
        """A waiter wants the open batch written now."""
        self._deadline: float | None = None
        """Loop time by which the open batch must be written (deferred changes only)."""
        self._failed: StateDirError | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._listeners: list[Callable[[Batch], None]] = []

    @classmethod
    async def open(cls, state_dir: Path) -> tuple[Spool, Snapshot]:
        """Open the database in ``state_dir`` and read what a previous run left.

        Raises:
            StateDirError: the database cannot be opened or read.
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-spool")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(executor, SpoolStore.open, state_dir / SPOOL_FILE)
            try:
                snapshot = await loop.run_in_executor(executor, store.load)
            except BaseException:
                await loop.run_in_executor(executor, store.close)
                raise
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(store, executor), snapshot

    def on_commit(self, listener: Callable[[Batch], None]) -> None:
        """Call ``listener(batch)`` after each batch is on disk, before its waiters resume."""
        self._listeners.append(listener)

    def stage(self, change: Callable[[Batch], None], *, within: float = STAGE_DELAY) -> None:
        """Apply ``change`` to the open batch; nobody waits for it. It is written with the
        next commit, or ``within`` seconds from now at the latest."""
        change(self._batch)
        self._write_by(within)

    def commit(
        self, change: Callable[[Batch], None], *, within: float | None = None
    ) -> asyncio.Future[None]:
        """Apply ``change`` to the open batch now; the future is done once it is on disk.

        The change is staged before this returns (no await), so callers can order it
        with other synchronous steps. With ``within``, the write may wait that many
        seconds for other changes to join it (the next immediate commit takes it along).
        The future fails with :class:`StateDirError` when the write failed: the agent
        cannot keep its promises and stops.
        """
        waiter = asyncio.get_running_loop().create_future()
        if self._failed is not None:
            _fail(waiter, self._failed)
            return waiter
        change(self._batch)
        self._waiters.append(waiter)
        if within is None:
            self._immediate = True
            self._wake.set()
        else:
            self._write_by(within)
        return waiter

    def _write_by(self, within: float) -> None:
        deadline = asyncio.get_running_loop().time() + within
        if self._deadline is None or deadline < self._deadline:
            self._deadline = deadline
            self._wake.set()  # run() re-arms its timer for the earlier deadline

    async def final_report(self, command_id: UUID) -> CommandFinished | None:
        """The stored final report of a finished command (read on the worker thread)."""
        return await self._call(self._store.final_report, command_id)

    async def run(self) -> None:
        """Write batches until cancelled.

        Raises:
            StateDirError: a write failed (disk full, I/O error).
        """
        loop = asyncio.get_running_loop()
        while True:
            if self._immediate or (self._deadline is not None and loop.time() >= self._deadline):
                await self._flush()
                continue
            self._wake.clear()
            if self._deadline is None:
                await self._wake.wait()
                continue
            # Only deferred changes: wait for a commit to take them along, or the deadline.
            try:
                async with asyncio.timeout_at(self._deadline):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def close(self) -> None:
        """Write what is staged, close the database and stop the worker thread."""
        try:
            if self._inflight is not None:
                # A write the cancelled run() left behind: let it land first.
                await asyncio.gather(self._inflight, return_exceptions=True)
            if self._failed is None and self._batch:
                await self._flush()
        except StateDirError as exc:
            log.error("spool.final_write_failed", error=str(exc))
        finally:
            await self._call(self._store.close)
            self._executor.shutdown(wait=True)

    async def _flush(self) -> None:
        batch, self._batch = self._batch, Batch()
        waiters, self._waiters = self._waiters, []
        self._immediate, self._deadline = False, None
        try:
            if batch:
                loop = asyncio.get_running_loop()
                self._inflight = loop.run_in_executor(self._executor, self._store.apply, batch)
                # Shielded: a batch handed to the thread is written even if we are
                # cancelled meanwhile (else the executor would drop it unwritten).
                await asyncio.shield(self._inflight)
                self._inflight = None
        except StateDirError as exc:
            self._failed = exc
            for waiter in waiters:
                if not waiter.done():
                    _fail(waiter, exc)
            raise
        except BaseException:
            # Cancelled: the waiters are being cancelled with us.
            for waiter in waiters:
                waiter.cancel()
            raise
        for listener in self._listeners:
            listener(batch)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)


def _fail(waiter: asyncio.Future[None], exc: StateDirError) -> None:
    """Fail a waiter without asyncio logging it when nobody awaits it: :meth:`Spool.run`
    raises the same error, which stops the agent."""
    waiter.set_exception(exc)
    waiter.exception()  # marks it retrieved
