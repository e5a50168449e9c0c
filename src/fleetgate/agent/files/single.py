"""One regular file up or down, inside the worker (as the user).

Upload: the bytes go to a temporary file beside the target (``O_EXCL``, mode 0600 while
it grows), named after the transfer id so a second attempt resumes where the first one
stopped; at the client's ``end`` the size and SHA-256 are checked, the file is fsynced,
given its final mode and renamed over the target in one step (``rename``, or ``link`` +
``unlink`` when it must not replace anything), then the directory is fsynced. Download:
the file is opened without following a final symlink that is not trusted, refused unless
it is a regular file, and streamed from the requested offset; the SHA-256 always covers
the whole file.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from typing import TYPE_CHECKING

from fleetgate.agent.files.pipeio import EndOfInput, PipeIO
from fleetgate.agent.files.walk import Located, Walker, os_error, still_at
from fleetgate.shared.errors import TransferError
from fleetgate.shared.files.framing import TEXT, decode_text
from fleetgate.shared.files.paths import temp_name
from fleetgate.shared.files.transfer import (
    WRITE_PIECE_BYTES,
    Ledger,
    Request,
    final_mode,
    resume_offset,
)


if TYPE_CHECKING:
    import hashlib

# hashlib (OpenSSL's start-up) and the hashing threads are imported where a file is hashed
# here: a handed-over file is hashed by the agent, and every transfer waits for the
# worker's start.


__all__ = ["download_file", "locate_target", "rename_into_place", "upload_file"]

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
"""O_NONBLOCK: opening a FIFO must not hang the worker before it is refused."""


def locate_target(walker: Walker, request: Request, *, directory: bool) -> Located:
    """Locate an upload's target; an existing directory receives ``request.name``."""
    located = walker.locate(request.path, follow_final=False)
    try:
        if located.st is not None and stat.S_ISDIR(located.st.st_mode):
            # Like cp: an existing directory receives the source under its own name; a
            # tree without a name replaces the directory itself (with overwrite).
            if request.name is not None:
                located = walker.descend(located, request.name)
            elif not directory:
                raise TransferError("is_dir", f"{located.path} is a directory")
        st = located.st
        if st is not None:
            if stat.S_ISLNK(st.st_mode):
                raise TransferError("symlink", f"{located.path} is a symlink (not replaced)")
            if directory and not stat.S_ISDIR(st.st_mode):
                raise TransferError("not_dir", f"{located.path} exists and is not a directory")
            if not directory and not stat.S_ISREG(st.st_mode):
                raise TransferError("special", f"{located.path} is not a regular file")
            if not request.overwrite:
                raise TransferError("exists", f"{located.path} exists (use overwrite)")
            _check_writable(located, directory=directory)
        elif request.expect_sha256 is not None:
            raise TransferError("changed", f"{located.path} was removed meanwhile")
        return located
    except BaseException:
        located.close()
        raise


def _check_writable(located: Located, *, directory: bool) -> None:
    """Replacing a file requires the right to write the file itself, as ``tee`` would.

    Renaming over it only needs the directory's write permission, so without this check
    a user could replace a file they may not write (in a directory they may write).
    """
    try:
        if directory:
            if not os.access(located.name, os.W_OK, dir_fd=located.parent_fd):
                raise PermissionError(13, "Permission denied")
        else:
            fd = os.open(
                located.name,
                os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                dir_fd=located.parent_fd,
            )
            os.close(fd)
    except OSError as exc:
        raise os_error(exc, located.path) from None


def _open_temp(located: Located, name: str, request: Request) -> tuple[int, int]:
    """Open (resume) or create the temporary file; return ``(fd, offset)``."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=located.parent_fd)
    except FileNotFoundError:
        try:
            fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=located.parent_fd)
        except OSError as exc:
            raise os_error(exc, located.parent) from None
        _lock(fd, located.parent + "/" + name)
        return fd, 0
    except OSError as exc:
        raise os_error(exc, located.parent + "/" + name) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        os.close(fd)
        raise TransferError("changed", f"{name} in {located.parent} is not this transfer's")
    _lock(fd, located.parent + "/" + name)
    st = os.fstat(fd)
    offset = resume_offset(st.st_size, request.size)
    if offset != st.st_size:
        os.ftruncate(fd, offset)
    return fd, offset


LOCK_WAIT = 15.0
"""Seconds a resumed upload waits for the previous attempt's worker to let go."""


def _lock(fd: int, shown: str) -> None:
    """Take the temporary file for this attempt alone.

    A client that reconnects quickly can start a second attempt while the first attempt's
    worker is still finishing (its agent has not yet seen the old connection end); the
    second one waits for the first to fsync and exit rather than write beside it.
    """
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise TransferError("busy", f"{shown} is in use by another attempt") from None
            time.sleep(0.05)


def rename_into_place(located: Located, temp: str, *, replace: bool) -> None:
    """Move ``temp`` to ``located.name`` atomically in the held directory, then fsync it."""
    pfd = located.parent_fd
    try:
        if replace:
            os.rename(temp, located.name, src_dir_fd=pfd, dst_dir_fd=pfd)
        else:
            # link() fails with EEXIST instead of replacing what appeared meanwhile.
            os.link(temp, located.name, src_dir_fd=pfd, dst_dir_fd=pfd, follow_symlinks=False)
            os.unlink(temp, dir_fd=pfd)
    except OSError as exc:
        raise os_error(exc, located.path) from None
    dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _check_unchanged(located: Located, expected: str, buf: bytearray) -> None:
    """Refuse unless the current target still has SHA-256 ``expected`` (edit)."""
    try:
        fd = os.open(located.name, _READ_FLAGS, dir_fd=located.parent_fd)
    except OSError as exc:
        raise TransferError(
            "changed", f"{located.path} changed meanwhile: {exc.strerror}"
        ) from None
    import hashlib

    from fleetgate.agent.files.hashing import hash_prefix

    try:
        hasher = hashlib.sha256()
        hash_prefix(fd, os.fstat(fd).st_size, hasher, buf)
    finally:
        os.close(fd)
    if hasher.hexdigest() != expected:
        raise TransferError("changed", f"{located.path} was modified since it was downloaded")


def upload_file(pipe: PipeIO, walker: Walker, request: Request) -> None:
    """Receive one file into place (see the module docstring)."""
    located = locate_target(walker, request, directory=False)
    try:
        temp = temp_name(located.name, request.transfer_id)
        fd, offset = _open_temp(located, temp, request)
        try:
            ledger = Ledger(offset, request.size, request.max_file_bytes)
            buf = bytearray(request.chunk_bytes)
            if request.handover:
                # The agent writes and hashes (prefix included) through this descriptor.
                pipe.send_fd({"type": "handover", "op": "upload", "offset": offset}, fd)
            else:
                import hashlib

                from fleetgate.agent.files.hashing import hash_prefix

                hasher = hashlib.sha256()
                hash_prefix(fd, offset, hasher, buf)
                os.lseek(fd, offset, os.SEEK_SET)
            pipe.send({"type": "ready", "offset": offset, "path": located.path})
            try:
                if request.handover:
                    end, digest = _agent_end(pipe, ledger)
                else:
                    end = _receive(pipe, fd, ledger, hasher)
                    digest = hasher.hexdigest()
            except EndOfInput:
                os.fsync(fd)  # interrupted: keep what arrived for the next attempt
                raise
            try:
                ledger.finish(end.get("size"), end.get("sha256"), digest)
                os.fsync(fd)
                existing = located.st.st_mode if located.st is not None else None
                os.fchmod(fd, final_mode(existing))
                if not still_at(walker, located):
                    raise TransferError("changed", f"{located.parent} was moved or replaced")
                if request.expect_sha256 is not None:
                    _check_unchanged(located, request.expect_sha256, buf)
                rename_into_place(located, temp, replace=located.st is not None)
            except BaseException:
                os.unlink(temp, dir_fd=located.parent_fd)
                raise
        finally:
            os.close(fd)
        pipe.send({"type": "done", "size": ledger.received, "sha256": digest, "path": located.path})
    finally:
        located.close()


def _agent_end(pipe: PipeIO, ledger: Ledger) -> tuple[dict[str, object], str]:
    """The agent's account of a handed-over upload: the client's ``end`` frame plus the
    bytes it wrote and their SHA-256 (``end``), or why it stopped (``abort``)."""
    obj = pipe.read_text()
    if obj["type"] == "abort":
        raise TransferError(str(obj.get("code", "io"))[:40], str(obj.get("message", ""))[:4000])
    received, computed = obj.get("received"), obj.get("computed")
    if (
        obj["type"] != "end"
        or not isinstance(received, int)
        or isinstance(received, bool)
        or received < ledger.received
        or not isinstance(computed, str)
    ):
        raise TransferError("malformed", f"unexpected {obj['type']!r} from the agent")
    ledger.add(received - ledger.received)  # the limits, checked once more here
    return obj, computed


def _receive(pipe: PipeIO, fd: int, ledger: Ledger, hasher: hashlib._Hash) -> dict[str, object]:
    """Write data frames to ``fd`` until the ``end`` control frame; return it."""
    from fleetgate.agent.files.hashing import BackgroundHash

    background = BackgroundHash(hasher)
    try:
        while True:
            kind, payload = pipe.read()
            if kind == TEXT:
                obj = decode_text(bytes(payload))
                if obj["type"] != "end":
                    raise TransferError("malformed", f"unexpected {obj['type']!r} during upload")
                return obj
            ledger.add(len(payload))
            background.start(payload)
            try:
                _write_all(fd, payload)
            finally:
                background.wait()
    finally:
        background.close()


def _write_all(fd: int, payload: memoryview) -> None:
    written = 0
    while written < len(payload):
        try:
            written += os.write(fd, payload[written : written + WRITE_PIECE_BYTES])
        except OSError as exc:
            raise os_error(exc, "the temporary file") from None


def download_file(pipe: PipeIO, walker: Walker, request: Request) -> None:
    """Stream one regular file from ``request.offset`` (see the module docstring)."""
    located = walker.locate(request.path, follow_final=True)
    try:
        if located.st is None:
            raise TransferError("not_found", f"{located.path}: no such file")
        if stat.S_ISDIR(located.st.st_mode):
            raise TransferError("is_dir", f"{located.path} is a directory (use recursive)")
        if not stat.S_ISREG(located.st.st_mode):
            raise TransferError("special", f"{located.path} is not a regular file")
        try:
            fd = os.open(located.name, _READ_FLAGS, dir_fd=located.parent_fd)
        except OSError as exc:
            raise os_error(exc, located.path) from None
    finally:
        located.close()
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (located.st.st_dev, located.st.st_ino):
            raise TransferError("changed", f"{located.path} was replaced while it was opened")
        if st.st_size > request.max_file_bytes:
            raise TransferError("too_large", f"{st.st_size} bytes exceed the limit")
        if request.offset > st.st_size:
            raise TransferError("invalid", f"offset {request.offset} is beyond the end")
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        if request.handover:
            # The agent reads, hashes and sends; it announces ``ready`` itself.
            pipe.send_fd(
                {"type": "handover", "op": "download", "offset": request.offset,
                 "size": st.st_size, "mode": stat.S_IMODE(st.st_mode), "path": located.path},
                fd,
            )  # fmt: skip
            return
        import hashlib

        from fleetgate.agent.files.hashing import BackgroundHash, hash_prefix

        hasher = hashlib.sha256()
        buf = bytearray(request.chunk_bytes)
        view = memoryview(buf)
        hash_prefix(fd, request.offset, hasher, buf)
        pipe.send(
            {"type": "ready", "offset": request.offset, "size": st.st_size,
             "mode": stat.S_IMODE(st.st_mode), "path": located.path}
        )  # fmt: skip
        position = request.offset
        background = BackgroundHash(hasher)
        try:
            while True:
                n = os.preadv(fd, [view], position)
                if n == 0:
                    break
                background.start(view[:n])
                try:
                    pipe.send_data(view[:n])
                finally:
                    background.wait()
                position += n
        finally:
            background.close()
        pipe.send({"type": "done", "size": position, "sha256": hasher.hexdigest()})
    finally:
        os.close(fd)
