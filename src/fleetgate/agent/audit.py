"""The audit log: one JSON line per command event, append-only, mode 0600.

Separate from the diagnostic log (stderr/journald): an operator or a SIEM reads it to know
which command ran as whom and how it ended. Every command leaves ``received`` (or
``refused``), ``started`` and ``finished`` (with the exit code). The environment of a
command is never written (it may hold secrets); the command line is, because that is
what an audit is for.

Rotation is size-based and in-process: before a line would push the file past
``max_bytes``, ``audit.log`` becomes ``audit.log.1`` (older files shift to ``.2`` …, the
one beyond ``backups`` is deleted) and a fresh file is opened. Lines are written with one
``write(2)`` on an ``O_APPEND`` descriptor, so a line is never interleaved or torn by a
rotation. They are not fsynced: the diagnostic log and the control plane hold the same
facts, and an fsync per command would cost more than it protects.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from fleetgate.agent.errors import StateDirError


__all__ = ["AuditLog"]

log = structlog.get_logger(__name__)


class AuditLog:
    """Appends audit events to a file, rotating it by size."""

    def __init__(self, path: Path, *, max_bytes: int = 10 * 1024 * 1024, backups: int = 5):
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._fd: int | None = None
        self._size = 0

    def open(self) -> None:
        """Create the directory (0700) and open the file (0600) for appending.

        Raises:
            StateDirError: the file cannot be created or opened.
        """
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._open_file()
        except OSError as exc:
            raise StateDirError(f"audit log {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Close the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def record(self, event: str, **fields: Any) -> None:
        """Append one event; an I/O error is logged, never raised (commands go on)."""
        entry = {"ts": datetime.now(UTC).isoformat(), "event": event, **fields}
        line = (json.dumps(entry, default=str, separators=(",", ":")) + "\n").encode()
        try:
            if self._fd is None:
                self._open_file()
            if self._size and self._size + len(line) > self._max_bytes:
                self._rotate()
            assert self._fd is not None
            os.write(self._fd, line)
            self._size += len(line)
        except OSError as exc:
            log.error("audit.write_failed", path=str(self.path), error=str(exc))
            self.close()

    def _open_file(self) -> None:
        fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        # An existing file keeps its mode otherwise; the audit log is root's only.
        os.fchmod(fd, 0o600)
        self._size = os.fstat(fd).st_size
        self._fd = fd

    def _rotate(self) -> None:
        self.close()
        if self._backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            oldest = self.path.with_name(f"{self.path.name}.{self._backups}")
            oldest.unlink(missing_ok=True)
            for n in range(self._backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    older.rename(self.path.with_name(f"{self.path.name}.{n + 1}"))
            self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        self._open_file()
        log.info("audit.rotated", path=str(self.path))
