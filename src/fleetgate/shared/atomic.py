"""Writing a small file atomically and durably: the one way every part replaces a file.

A reader sees the old content or the new one, never a mix; after a crash or power loss
the file is one or the other. The temporary file is created beside the target with its
final mode before any byte is written (a secret is never readable by others, not even
for a moment), flushed and fsynced, renamed over the target, and the directory is
fsynced so that the rename itself survives a power loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


__all__ = ["atomic_write"]


def atomic_write(
    path: Path,
    data: str | bytes,
    mode: int = 0o644,
    *,
    check: Callable[[Path], None] | None = None,
    exclusive: bool = False,
) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8), with permissions ``mode``.

    ``check``, when given, is called with the written temporary file (a dot file beside
    the target) before it replaces the target: it raises to keep the old file (``visudo
    -c`` of a sudoers drop-in, for example). With ``exclusive``, an existing ``path`` is
    never replaced: :class:`FileExistsError` is raised instead (two processes creating a
    key at the same moment end up with one key, complete, and both read it).

    Raises:
        OSError: the directory is not writable, the disk is full, ...; the target is then
            unchanged and no temporary file is left behind.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    # Created 0600 and exclusively (never through a planted symlink), then set to ``mode``.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if check is not None:
            check(tmp)
        if exclusive:
            os.link(tmp, path)  # fails if path exists, unlike a rename
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
