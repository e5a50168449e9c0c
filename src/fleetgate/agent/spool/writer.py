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

Nor does every change need its fsync before it has consequences. A commit with
``sync_first=False`` (reports about a command already recorded as running: its output,
start and final report) is done once written with ``synchronous=NORMAL``: the frames
are in the OS page cache, which survives a SIGKILL of the agent, and the outbox sends
the reports at once. Their fsync comes with the next FULL commit (the next command's
start: its fsync covers every frame before it), or :data:`SYNC_DELAY` later on its own.
So a short command's round trip pays one fsync, the one before its process starts, and
a sequence of commands one fsync each. What a power cut can do then:

* after the report reached the control plane, before the fsync: the agent restarts with
  the command running and reports it ``interrupted``; the control plane keeps the first
  final result it stored (a final result is stored once), so nothing is lost;
* before the report left: the command is reported ``interrupted``, as before for a
  power cut between its end and its final report's commit;
* rids of reports lost this way are given again after the restart; the control plane
  stores reports by their content, the rid only names them in its confirmation.

The agent forgets a command (the confirmation's deletion of its report, the retention's
deletion of its row) only in a later batch, and such a batch is written only once
what came before was synced, or in a FULL commit whose own fsync covers both: nothing is
forgotten on disk while what it stands for could still be lost. (SQLite would keep that
order anyway: a power cut keeps a prefix of the WAL's commits.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
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

SYNC_DELAY = 0.02
"""Seconds a batch written without its fsync (reports already sent) may wait for a FULL
commit to sync it along (the next command's start), before it is synced on its own."""

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
        self._inflight: asyncio.Future[Any] | None = None
        self._sync_by: float | None = None
        """Loop time by which batches written without their fsync get it, if no FULL
        commit (whose fsync covers them) came first; None when nothing waits for one."""
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
        self,
        change: Callable[[Batch], None],
        *,
        within: float | None = None,
        sync_first: bool = True,
    ) -> asyncio.Future[None]:
        """Apply ``change`` to the open batch now; the future is done once it is on disk.

        The change is staged before this returns (no await), so callers can order it
        with other synchronous steps. With ``within``, the write may wait that many
        seconds for other changes to join it (the next immediate commit takes it along).
        With ``sync_first`` False, the future is done once the change is written, before
        its fsync (see the module's docstring: only for reports about a command already
        durably running). The future fails with :class:`StateDirError` when the write
        failed: the agent cannot keep its promises and stops.
        """
        waiter = asyncio.get_running_loop().create_future()
        if self._failed is not None:
            _fail(waiter, self._failed)
            return waiter
        change(self._batch)
        if sync_first:
            self._batch.sync_first = True
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
        """Write batches (and sync those written without it) until cancelled.

        Raises:
            StateDirError: a write or a sync failed (disk full, I/O error).
        """
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if self._immediate or (self._deadline is not None and now >= self._deadline):
                await self._flush()
                continue
            if self._sync_by is not None and now >= self._sync_by:
                await self._sync()
                continue
            self._wake.clear()
            due = [t for t in (self._deadline, self._sync_by) if t is not None]
            if not due:
                await self._wake.wait()
                continue
            # Only deferred work: wait for a commit to take it along, or its deadline.
            try:
                async with asyncio.timeout_at(min(due)):
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
            if self._failed is None and self._sync_by is not None:
                await self._sync()
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
            if batch.forgets and not batch.must_sync and self._sync_by is not None:
                # A confirmation or the pruning, not synced first: written only once
                # what came before is durable, so that nothing is forgotten on disk
                # before what it forgets.
                await self._sync()
            if batch:
                await self._in_worker(self._store.apply, batch)
        except StateDirError as exc:
            self._fail_all(waiters, exc)
            raise
        except BaseException:
            # Cancelled: the waiters are being cancelled with us.
            for waiter in waiters:
                waiter.cancel()
            raise
        if batch.must_sync and batch.must_persist:
            self._sync_by = None  # its FULL commit synced the WAL: every frame before too
        elif batch.must_persist and self._sync_by is None:
            self._sync_by = asyncio.get_running_loop().time() + SYNC_DELAY
            self._wake.set()  # run() re-arms its timer for the deadline
        for listener in self._listeners:
            listener(batch)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _sync(self) -> None:
        """fsync what batches written without it left in the page cache (worker thread).

        Raises:
            StateDirError: it failed: what was sent may not survive a power cut.
        """
        self._sync_by = None
        try:
            await self._in_worker(self._store.sync)
        except StateDirError as exc:
            self._fail_all([], exc)
            raise

    async def _in_worker(self, fn: Callable[..., T], *args: object) -> T:
        """Run a write on the worker thread, to its end even if cancelled meanwhile:
        ``close()`` waits for it (else the executor could drop it unwritten)."""
        loop = asyncio.get_running_loop()
        inflight = loop.run_in_executor(self._executor, fn, *args)
        self._inflight = inflight
        result = await asyncio.shield(inflight)
        self._inflight = None
        return result

    def _fail_all(self, waiters: list[asyncio.Future[None]], exc: StateDirError) -> None:
        self._failed = exc
        for waiter in waiters:
            if not waiter.done():
                _fail(waiter, exc)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)


def _fail(waiter: asyncio.Future[None], exc: StateDirError) -> None:
    """Fail a waiter without asyncio logging it when nobody awaits it: :meth:`Spool.run`
    raises the same error, which stops the agent."""
    waiter.set_exception(exc)
    waiter.exception()  # marks it retrieved
