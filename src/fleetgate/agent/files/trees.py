"""Directories as a tar stream, inside the worker (as the user).

Nothing is ever archived to disk: a download is ``tarfile`` in stream mode (``w|``)
writing straight into data frames, an upload is ``r|`` reading straight from them. An
upload is extracted into a fresh temporary directory (0700) beside the target and moved
into place only after the stream's SHA-256 matched: with ``renameat2(RENAME_NOREPLACE)``
for a new directory, ``RENAME_EXCHANGE`` to replace an existing one (then the old tree is
removed). Members are checked before extraction: relative names without ``..``, no device
nodes or FIFOs, hard links inside the tree, nothing written through a symlink to outside
(``tarfile``'s own realpath check); symlinks stay symlinks; nothing is chowned, so the
tree belongs to the user who wrote it. Trees do not resume: an interrupted upload's
temporary directory is removed.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import stat
import tarfile
from typing import IO, Any, cast

from fleetgate.agent.files.pipeio import PipeIO
from fleetgate.agent.files.single import locate_target
from fleetgate.agent.files.walk import Walker, os_error, still_at
from fleetgate.shared.errors import TransferError
from fleetgate.shared.files.framing import TEXT, decode_text
from fleetgate.shared.files.members import CheckedMembers, tar_filter
from fleetgate.shared.files.paths import temp_name
from fleetgate.shared.files.transfer import Ledger, Request


__all__ = ["download_tree", "upload_tree"]

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


class _TarFile(tarfile.TarFile):
    def chown(self, *args: Any, **kwargs: Any) -> None:
        """Never chown: the worker is the user, and what it writes is the user's."""


def _renameat2(dir_fd: int, old: str, new: str, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(dir_fd, os.fsencode(old), dir_fd, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), new)


class _FrameReader:
    """A read-only file object over the upload's data frames (for ``tarfile`` ``r|``)."""

    def __init__(self, pipe: PipeIO, ledger: Ledger, hasher: hashlib._Hash) -> None:
        self.pipe, self.ledger, self.hasher = pipe, ledger, hasher
        self.pending = memoryview(b"")
        self.end: dict[str, Any] | None = None

    def read(self, size: int = -1) -> bytes:
        while not self.pending and self.end is None:
            kind, payload = self.pipe.read()
            if kind == TEXT:
                obj = decode_text(bytes(payload))
                if obj["type"] != "end":
                    raise TransferError("malformed", f"unexpected {obj['type']!r} in a tree")
                self.end = obj
            else:
                self.ledger.add(len(payload))
                self.hasher.update(payload)
                self.pending = memoryview(bytes(payload))
        count = len(self.pending) if size < 0 else min(size, len(self.pending))
        out, self.pending = self.pending[:count].tobytes(), self.pending[count:]
        return out

    def drain(self) -> dict[str, Any]:
        """Read to the ``end`` frame (tar's trailing padding) and return it."""
        while self.read(1 << 20):
            pass
        assert self.end is not None
        return self.end


class _FrameWriter:
    """A write-only file object sending data frames of ``chunk`` bytes."""

    def __init__(self, pipe: PipeIO, chunk: int, hasher: hashlib._Hash) -> None:
        self.pipe, self.chunk, self.hasher = pipe, chunk, hasher
        self.buf = bytearray()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.buf += data
        if len(self.buf) >= self.chunk:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buf:
            self.hasher.update(self.buf)
            self.pipe.send_data(self.buf)
            self.size += len(self.buf)
            self.buf = bytearray()


def upload_tree(pipe: PipeIO, walker: Walker, request: Request) -> None:
    """Receive a directory as a tar stream (see the module docstring)."""
    located = locate_target(walker, request, directory=True)
    pfd = located.parent_fd
    temp = temp_name(located.name, request.transfer_id)
    try:
        os.fchdir(pfd)
        shutil.rmtree(temp, ignore_errors=True)
        os.mkdir(temp, 0o700)
    except OSError as exc:
        located.close()
        raise os_error(exc, located.parent) from None
    try:
        ledger = Ledger(0, request.size, 1 << 62)
        hasher = hashlib.sha256()
        pipe.send({"type": "ready", "offset": 0, "path": located.path})
        reader = _FrameReader(pipe, ledger, hasher)
        try:
            with _TarFile.open(fileobj=cast(IO[bytes], reader), mode="r|", bufsize=1 << 20) as tar:
                if hasattr(tarfile, "tar_filter"):
                    tar.extraction_filter = tar_filter
                seen = CheckedMembers(tar, temp, request)
                tar.extractall(temp, members=seen)  # noqa: S202 (filtered, see _incoming)
        except tarfile.TarError as exc:
            raise TransferError("malformed", f"not a valid tar stream: {exc}") from None
        except OSError as exc:
            raise os_error(exc, located.path) from None
        end = reader.drain()
        ledger.finish(end.get("size"), end.get("sha256"), hasher.hexdigest())
        if not seen.root:
            os.chmod(temp, 0o755)  # noqa: S103 (0777 & ~umask) no entry for the tree itself: a new directory's mode
        os.sync()  # every extracted file durable before the tree becomes visible
        if not still_at(walker, located):
            raise TransferError("changed", f"{located.parent} was moved or replaced")
        try:
            if located.st is None:
                _renameat2(pfd, temp, located.name, _RENAME_NOREPLACE)
            else:
                _renameat2(pfd, temp, located.name, _RENAME_EXCHANGE)
                shutil.rmtree(temp, ignore_errors=True)  # the old tree, swapped out
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise TransferError("exists", f"{located.path} appeared meanwhile") from None
            raise os_error(exc, located.path) from None
        pipe.send(
            {"type": "done", "size": ledger.received, "sha256": hasher.hexdigest(),
             "path": located.path}
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    finally:
        os.chdir("/")
        located.close()


def _outgoing(request: Request) -> Any:
    def check(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if info.ischr() or info.isblk() or info.isfifo():
            return None  # special files are not content: skipped
        if info.isfile() and info.size > request.max_file_bytes:
            raise TransferError("too_large", f"{info.name}: {info.size} bytes exceed the limit")
        return info

    return check


def download_tree(pipe: PipeIO, walker: Walker, request: Request) -> None:
    """Send a directory as a tar stream (see the module docstring)."""
    located = walker.locate(request.path, follow_final=True)
    try:
        if located.st is None or not stat.S_ISDIR(located.st.st_mode):
            raise TransferError("not_dir", f"{located.path} is not a directory")
        try:
            dfd = os.open(
                located.name or ".",
                os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                dir_fd=located.parent_fd,
            )
        except OSError as exc:
            raise os_error(exc, located.path) from None
    finally:
        located.close()
    try:
        os.fchdir(dfd)
        hasher = hashlib.sha256()
        pipe.send({"type": "ready", "offset": 0, "path": located.path})
        writer = _FrameWriter(pipe, request.chunk_bytes, hasher)
        try:
            with _TarFile.open(
                fileobj=cast(IO[bytes], writer), mode="w|", format=tarfile.PAX_FORMAT,
                bufsize=1 << 20,
            ) as tar:  # fmt: skip
                tar.add(".", recursive=True, filter=_outgoing(request))
        except OSError as exc:
            raise os_error(exc, exc.filename or located.path) from None
        writer.flush()
        pipe.send({"type": "done", "size": writer.size, "sha256": hasher.hexdigest()})
    finally:
        os.chdir("/")
        os.close(dfd)
