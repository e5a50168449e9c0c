"""Writing one terminal's asciicast v2 recording into the spool, within its quota.

The file ``<recordings_dir>/<terminal_id>.cast`` (mode 0600) is written as the session
runs. Every line is charged to the shared :class:`SpoolQuota` before it is written; the
first line that does not fit stops the recording (``stopped`` becomes true, and it stays
a valid cast file that ends early). The terminal decides what that means (policy).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Mapping
from pathlib import Path
from uuid import UUID

import structlog

from fleetgate.agent.websh.cast import CastEncoder, header_line
from fleetgate.agent.websh.quota import SpoolQuota


__all__ = ["Recorder", "cast_path"]

log = structlog.get_logger(__name__)


def cast_path(directory: Path, terminal_id: UUID) -> Path:
    """Where a terminal's recording is spooled."""
    return directory / f"{terminal_id}.cast"


class Recorder:
    """Appends a terminal's events to its cast file until closed or out of quota."""

    def __init__(self, path: Path, quota: SpoolQuota, file: io.BufferedWriter) -> None:
        self.path = path
        self.stopped = False
        self.written = 0
        self._quota = quota
        self._file: io.BufferedWriter | None = file
        self._encoder = CastEncoder()
        self._started = time.monotonic()

    @classmethod
    def create(
        cls,
        directory: Path,
        terminal_id: UUID,
        quota: SpoolQuota,
        *,
        width: int,
        height: int,
        env: Mapping[str, str],
        title: str | None = None,
    ) -> Recorder:
        """Create the cast file and write its header.

        Raises:
            OSError: the file cannot be created (it must not exist yet).
        """
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = cast_path(directory, terminal_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        recorder = cls(path, quota, io.BufferedWriter(io.FileIO(fd, "wb"), 64 * 1024))
        recorder._write(header_line(width, height, int(time.time()), env, title))
        return recorder

    def output(self, data: bytes) -> None:
        """Record bytes the shell printed."""
        if self._file is not None:
            self._write(self._encoder.output(self._elapsed(), data))

    def input(self, data: bytes) -> None:
        """Record bytes the client typed."""
        if self._file is not None:
            self._write(self._encoder.input(self._elapsed(), data))

    def resize(self, cols: int, rows: int) -> None:
        """Record a window size change."""
        if self._file is not None:
            self._write(self._encoder.resize(self._elapsed(), cols, rows))

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        if self._file is None:
            return
        self._write(self._encoder.flush(self._elapsed()))
        self._close_file()

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    def _write(self, line: bytes) -> None:
        if not line or self._file is None:
            return
        if not self._quota.take(len(line)):
            self.stopped = True
            log.warning(
                "websh.recording_stopped",
                path=str(self.path),
                reason="spool_full",
                written=self.written,
                max_bytes=self._quota.max_bytes,
            )
            self._close_file()
            return
        try:
            self._file.write(line)
        except OSError as exc:
            self._quota.give_back(len(line))
            self.stopped = True
            log.error("websh.recording_failed", path=str(self.path), error=str(exc))
            self._close_file()
            return
        self.written += len(line)

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        try:
            file.close()
        except OSError as exc:
            log.error("websh.recording_failed", path=str(self.path), error=str(exc))
