"""The durable spool: one SQLite database (WAL) in the state directory.

A thin synchronous module: it opens the file, loads what a previous run left, and writes
:class:`~fleetgate.agent.spool.batch.Batch` objects, each in one transaction. It is only ever
called from one worker thread (see :mod:`fleetgate.agent.spool.writer`), so the connection is
never shared. Three kinds of commit (``Batch.must_sync``, ``Batch.must_persist``):

* ``synchronous=FULL`` for a batch the agent acts on only once it survives a power cut: a
  command accepted (its delivery is reported) or recorded as running (its process is
  started). Batching keeps that to one fsync per burst.
* ``synchronous=NORMAL`` then :meth:`SpoolStore.sync` for a batch of reports about
  commands already durably running or finished (a final report, output, the start): the
  commit puts the frames in the OS page cache, which survives a SIGKILL of the agent, and
  the writer sends the reports while the fsync of the WAL runs (see the writer).
* ``synchronous=NORMAL`` alone for confirmations and forgotten ids: a power cut may undo
  them, which only means a report is sent again (the control plane ignores the
  duplicate) or an old id is remembered longer.

The WAL is replayed in order and stops at the first frame whose checksum fails, so a
power cut keeps a prefix of the commits: a later commit never survives without an
earlier one. The next FULL commit or sync makes the frames of every batch before it
durable too.

Tables: ``inbox`` (every accepted command id, its state, the command itself until it
finishes, since its environment may hold secrets, and once finished its final report), ``outbox`` (reports the control plane has not confirmed, by rid) and ``meta``
(the next rid, so rids keep increasing across restarts).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from uuid import UUID

from fleetgate.agent.errors import StateDirError
from fleetgate.agent.spool.batch import Batch
from fleetgate.agent.spool.inbox import CommandState
from fleetgate.shared.errors import ProtocolViolation
from fleetgate.shared.protocol import (
    CommandFinished,
    CommandReport,
    CommandRun,
    decode_agent_message,
    decode_server_message,
    encode,
)


__all__ = ["SCHEMA_VERSION", "Snapshot", "SpoolStore"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (
    command_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    delivered_at TEXT NOT NULL,
    command TEXT,
    finished_at REAL,
    result_bytes INTEGER NOT NULL DEFAULT 0,
    final TEXT
);
CREATE INDEX IF NOT EXISTS inbox_by_seq ON inbox (seq);
CREATE TABLE IF NOT EXISTS outbox (rid INTEGER PRIMARY KEY, report TEXT NOT NULL);
"""


@dataclass
class Snapshot:
    """What a previous run left on disk."""

    next_rid: int = 0
    reports: list[CommandReport] = field(default_factory=list)
    """Unconfirmed reports, in rid order."""
    active: list[tuple[UUID, CommandState]] = field(default_factory=list)
    """Commands accepted and not finished (queued or running when the agent stopped)."""
    queued: list[tuple[CommandRun, datetime]] = field(default_factory=list)
    """Of those, the ones that never started, with their command and delivery time."""
    finished: list[tuple[UUID, float, int]] = field(default_factory=list)
    """Finished commands (id, finished at as epoch seconds, result size), oldest first."""


class SpoolStore:
    """The SQLite connection and its few statements. Not thread-safe: one thread only,
    except for :meth:`sync`, which does not touch the connection."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._seq = 0
        self._synchronous = "FULL"
        # Commands stored with an environment: when they finish, their env is erased
        # and the WAL is checkpointed and truncated, so no old page keeps it.
        self._with_env: set[str] = set()

    @classmethod
    def open(cls, path: Path) -> SpoolStore:
        """Open (creating 0600) and migrate the database.

        Raises:
            StateDirError: the file cannot be created, is not a database, or the disk is
                full or read-only.
        """
        try:
            if not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                # Deleted and overwritten content (a command's env) is zeroed on disk.
                conn.execute("PRAGMA secure_delete=ON")
                conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                    (SCHEMA_VERSION,),
                )
            except BaseException:
                conn.close()
                raise
        except (sqlite3.Error, OSError) as exc:
            raise StateDirError(
                f"spool database {path} is not usable: {_reason(exc, path)}"
            ) from exc
        return cls(conn, path)

    def load(self) -> Snapshot:
        """Read everything a previous run left (at start, before any write).

        Raises:
            StateDirError: the database cannot be read or holds something unreadable.
        """
        snap = Snapshot()
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'next_rid'").fetchone()
            rid_floor = 0 if row is None else int(row[0])
            for rid, text in self._conn.execute("SELECT rid, report FROM outbox ORDER BY rid"):
                snap.reports.append(_decode_report(text, rid))
            snap.next_rid = max(rid_floor, snap.reports[-1].rid + 1 if snap.reports else 0)
            query = (
                "SELECT command_id, state, finished_at, result_bytes, seq, delivered_at, command "
                "FROM inbox ORDER BY seq"
            )
            for (
                command_id,
                state,
                finished_at,
                size,
                seq,
                delivered_at,
                command,
            ) in self._conn.execute(query):
                self._seq = max(self._seq, int(seq))
                if state == CommandState.FINISHED.value:
                    snap.finished.append((UUID(command_id), float(finished_at), int(size)))
                    continue
                snap.active.append((UUID(command_id), CommandState(state)))
                if command is not None:
                    self._with_env.add(command_id)  # maybe: scrubbed when it finishes
                if state == CommandState.QUEUED.value and command is not None:
                    run = decode_server_message(command, max_bytes=1 << 30)
                    if not isinstance(run, CommandRun):
                        raise ValueError(f"inbox row {command_id} does not hold a command")
                    snap.queued.append((run, datetime.fromisoformat(delivered_at)))
        except (sqlite3.Error, ValueError, ProtocolViolation) as exc:
            raise StateDirError(f"spool database {self.path}: {_reason(exc, self.path)}") from exc
        snap.finished.sort(key=lambda entry: entry[1])
        return snap

    def apply(self, batch: Batch) -> None:
        """Write one batch in one transaction.

        Raises:
            StateDirError: the write failed (disk full, I/O error); nothing was written.
        """
        conn = self._conn
        try:
            synchronous = "FULL" if batch.must_sync else "NORMAL"
            if synchronous != self._synchronous:
                conn.execute(f"PRAGMA synchronous={synchronous}")
                self._synchronous = synchronous
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._write(batch)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StateDirError(f"spool database {self.path}: {_reason(exc, self.path)}") from exc
        self._scrub(batch)

    def _scrub(self, batch: Batch) -> None:
        """After a batch that finished a command stored with an env: move every page to
        the database file and truncate the WAL, whose old frames still held the env."""
        ended = {str(e.command_id) for e in batch.finished} | {str(c) for c in batch.forgotten}
        erased = ended & self._with_env
        if not erased:
            return
        self._with_env -= erased
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:  # the batch is committed; the next finish tries again
            self._with_env |= erased

    def sync(self) -> None:
        """Make every committed batch durable: fdatasync of the WAL, which holds the frames
        ``synchronous=NORMAL`` commits left in the page cache (what a FULL commit does
        after writing them). Without a WAL file, everything was checkpointed into the
        database file, and a checkpoint syncs both. Safe beside the connection's thread:
        it opens the WAL file itself.

        Raises:
            StateDirError: the sync failed; what was written may be lost in a power cut.
        """
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateDirError(f"spool database {self.path}: {_reason(exc, self.path)}") from exc
        try:
            os.fdatasync(fd)
        except OSError as exc:
            raise StateDirError(f"spool database {self.path}: {_reason(exc, self.path)}") from exc
        finally:
            os.close(fd)

    def final_report(self, command_id: UUID) -> CommandFinished | None:
        """The stored final report of a finished command, if the inbox still has it."""
        row = self._conn.execute(
            "SELECT final FROM inbox WHERE command_id = ?", (str(command_id),)
        ).fetchone()
        if row is None or row[0] is None:
            return None
        report = _decode_report(row[0], None)
        return report if isinstance(report, CommandFinished) else None

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite on the last close)."""
        self._conn.close()

    def _write(self, batch: Batch) -> None:
        conn = self._conn
        rows = []
        for command, delivered_at in batch.accepted:
            self._seq += 1
            rows.append((str(command.command_id), self._seq, _iso(delivered_at), encode(command)))
            if command.env:
                self._with_env.add(str(command.command_id))
        conn.executemany(
            "INSERT OR IGNORE INTO inbox (command_id, seq, state, delivered_at, command) "
            "VALUES (?, ?, 'queued', ?, ?)",
            rows,
        )
        conn.executemany(
            "UPDATE inbox SET state = ? WHERE command_id = ?",
            [(state.value, str(command_id)) for command_id, state in batch.states],
        )
        conn.executemany(
            "UPDATE inbox SET state = 'finished', finished_at = ?, result_bytes = ?, final = ?, "
            "command = NULL WHERE command_id = ?",
            [
                (
                    e.finished_at.timestamp(),
                    len(e.report.result.encode()),
                    encode(e.report),
                    str(e.command_id),
                )
                for e in batch.finished
            ],
        )
        conn.executemany(
            "DELETE FROM inbox WHERE command_id = ?", [(str(c),) for c in batch.forgotten]
        )
        conn.executemany(
            "INSERT OR REPLACE INTO outbox (rid, report) VALUES (?, ?)",
            [(r.rid, encode(r)) for r in batch.reports],
        )
        conn.executemany("DELETE FROM outbox WHERE rid = ?", [(rid,) for rid in batch.confirmed])
        if batch.next_rid is not None:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('next_rid', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
                (batch.next_rid,),
            )


def _decode_report(text: str, rid: int | None) -> CommandReport:
    message = decode_agent_message(text, max_bytes=1 << 30)
    if not isinstance(message, CommandReport) or (rid is not None and message.rid != rid):
        raise ValueError(f"outbox row {rid} does not hold a report")
    return message


def _iso(at: datetime) -> str:
    return at.isoformat()


def _reason(exc: BaseException, path: Path) -> str:
    """The error in words, with SQLite's code and, when space is short, the free space.

    SQLite reports a full disk during a WAL write as a plain "disk I/O error"; the free
    space on the file system tells the operator what is really wrong.
    """
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    name = getattr(exc, "sqlite_errorname", None)
    if name:
        text = f"{text} ({name})"
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return text
    free = st.f_bavail * st.f_frsize
    if free < _LOW_SPACE:
        text += f"; the file system has only {free // 1024} KiB free"
    return text


_LOW_SPACE = 16 * 1024 * 1024
"""Below this much free space, an error message mentions it."""
