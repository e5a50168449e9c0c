"""Resolving a transfer's path one ``openat`` at a time (runs in the worker, as the user).

Every component is opened with ``O_PATH | O_NOFOLLOW`` relative to the directory opened
before it, so the kernel checks the user's search permission at each step and a symlink
is always seen as a symlink, never silently followed. A symlink is followed only when it
belongs to root or to the user itself (the rule of Linux ``fs.protected_symlinks``, applied
whatever the sysctl says): system links such as ``/var/run`` work, a link planted by
another user in a shared directory does not. What the walk hands back is an open
descriptor of the parent directory, so later steps (create, rename, open) happen in the
directory that was checked, whatever is swapped into the path meanwhile;
:func:`still_at` tells whether the path still leads there.
"""

from __future__ import annotations

import errno
import os
import stat

from fleetgate.shared.errors import TransferError
from fleetgate.shared.files.paths import components, within_roots


__all__ = ["Located", "Walker", "os_error", "still_at"]

MAX_SYMLINK_HOPS = 40
"""Linux's own limit (MAXSYMLINKS)."""

_ERRNO_CODES = {
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.ENOENT: "not_found",
    errno.ENOTDIR: "not_dir",
    errno.EISDIR: "is_dir",
    errno.ELOOP: "symlink",
    errno.EEXIST: "exists",
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EROFS: "read_only",
    errno.EFBIG: "too_large",
    errno.ENAMETOOLONG: "too_long",
}


def os_error(exc: OSError, path: str) -> TransferError:
    """Translate an OSError met on ``path`` into a :class:`TransferError`."""
    code = _ERRNO_CODES.get(exc.errno or 0, "io")
    return TransferError(code, f"{path}: {exc.strerror or exc}")


class Located:
    """Where a path leads. (A plain class: ``dataclasses`` and the ``inspect`` it loads
    were 6 ms of the start of every worker, which every transfer waits for.)

    Attributes:
        parent_fd: an ``O_PATH`` descriptor of the parent directory (the caller closes it).
        parent: the resolved absolute path of that directory.
        name: the last component (empty for ``/``).
        st: the ``lstat`` of the last component, or None when it does not exist.
    """

    __slots__ = ("name", "parent", "parent_fd", "st")

    def __init__(self, parent_fd: int, parent: str, name: str, st: os.stat_result | None) -> None:
        self.parent_fd = parent_fd
        self.parent = parent
        self.name = name
        self.st = st

    @property
    def path(self) -> str:
        """The resolved absolute path."""
        return (self.parent.rstrip("/") + "/" + self.name) if self.name else self.parent

    def close(self) -> None:
        """Close the parent directory descriptor."""
        os.close(self.parent_fd)


def _join(resolved: list[str], target: str) -> list[str]:
    """The components of a symlink's ``target`` read in the directory ``resolved``.

    ``resolved`` contains no symlinks, so ``..`` in a link target can be applied
    lexically: that is exactly what the kernel would do.
    """
    if "\0" in target:
        raise TransferError("nul", "a symlink target contains a NUL byte")
    parts = [] if target.startswith("/") else list(resolved)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
        else:
            parts.append(part)
    return parts


class Walker:
    """Resolves paths for one worker.

    Args:
        uid: the worker's user; its own symlinks are followed.
        roots: normalised allowed roots (empty: anywhere); checked on the resolved path.
    """

    def __init__(self, uid: int, roots: tuple[str, ...] = ()) -> None:
        self.uid = uid
        self.roots = roots

    def locate(self, path: str, *, follow_final: bool) -> Located:
        """Walk to ``path``; the last component is followed only if ``follow_final``.

        Raises:
            TransferError: a missing or non-directory parent, an untrusted symlink, a
                loop, a permission denied on the way, or a path outside the roots.
        """
        pending = components(path)
        resolved: list[str] = []
        fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        hops = 0
        try:
            while pending:
                name = pending.pop(0)
                shown = "/" + "/".join([*resolved, name])
                try:
                    child = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if pending:
                        raise TransferError("not_found", f"{shown}: no such directory") from None
                    return self._found(fd, resolved, name, None)
                except OSError as exc:
                    raise os_error(exc, shown) from None
                try:
                    st = os.fstat(child)
                    if stat.S_ISLNK(st.st_mode) and (pending or follow_final):
                        if st.st_uid not in (0, self.uid):
                            raise TransferError(
                                "symlink",
                                f"{shown} is a symlink owned by uid {st.st_uid} (not followed)",
                            )
                        hops += 1
                        if hops > MAX_SYMLINK_HOPS:
                            raise TransferError("symlink", f"{path}: too many symlinks")
                        pending = _join(resolved, os.readlink("", dir_fd=child)) + pending
                        resolved = []
                        os.close(fd)
                        fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                        continue
                    if not pending:
                        return self._found(fd, resolved, name, st)
                    if not stat.S_ISDIR(st.st_mode):
                        raise TransferError("not_dir", f"{shown} is not a directory")
                    os.close(fd)
                    fd, child = child, -1
                    resolved.append(name)
                finally:
                    if child >= 0:
                        os.close(child)
            # The path is "/" itself.
            return self._found(fd, [], "", os.stat(fd))
        except BaseException:
            os.close(fd)
            raise

    def _found(self, fd: int, resolved: list[str], name: str, st: os.stat_result | None) -> Located:
        located = Located(fd, "/" + "/".join(resolved), name, st)
        if not within_roots(located.path, self.roots):
            raise TransferError("outside_roots", f"{located.path} is outside the allowed roots")
        return located

    def descend(self, located: Located, name: str) -> Located:
        """Step into the directory ``located`` names and look up ``name`` there.

        Raises:
            TransferError: the directory changed or cannot be searched.
        """
        try:
            fd = os.open(
                located.name or ".",
                os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                dir_fd=located.parent_fd,
            )
        except OSError as exc:
            raise os_error(exc, located.path) from None
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            os.close(fd)
            raise os_error(exc, located.path + "/" + name) from None
        located.close()
        return self._found(fd, components(located.path), name, st)


def still_at(walker: Walker, located: Located) -> bool:
    """Whether ``located.parent`` still resolves to the directory held open.

    Checked just before an upload is renamed into place: if a component of the path
    was swapped (for a symlink, another directory) during the transfer, the file would
    land somewhere the operator did not name, so the transfer is refused instead.
    """
    try:
        again = walker.locate(located.parent, follow_final=True)
    except TransferError:
        return False
    try:
        held = os.fstat(located.parent_fd)
        now = os.stat(again.name, dir_fd=again.parent_fd) if again.name else held
        return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)
    except OSError:
        return False
    finally:
        again.close()
