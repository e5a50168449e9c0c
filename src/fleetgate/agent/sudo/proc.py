"""What the kernel says about a caller of the decision socket (blocking, Linux /proc).

Nothing the client sends about itself is trusted: its pid and real uid come from the
kernel with its datagram (``SCM_CREDENTIALS``), its process sessions from ``/proc/<pid>``.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass


__all__ = [
    "UCRED_SIZE",
    "Caller",
    "fleet_member",
    "identify",
    "is_executable",
    "parent_of",
    "sender",
    "trusted_realpath",
    "user_name",
]

MAX_HOPS = 16
"""Ancestors looked at for a managed session (a sudo run from a nested sudo or a
``setsid`` child still belongs to the shell that started it, while its parent lives)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """The process that called sudo: its pid, real uid and user, and the session ids of
    itself and its ancestors (its own first)."""

    pid: int
    uid: int
    user: str
    sids: tuple[int, ...]


_UCRED = struct.Struct("3i")
UCRED_SIZE = _UCRED.size
"""The size of ``struct ucred`` (pid, uid, gid), the credentials of a datagram."""


def sender(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, int] | None:
    """``(pid, real uid)`` of a datagram's sender, from the ``SCM_CREDENTIALS`` the kernel
    attached to it (the receiving socket has ``SO_PASSCRED``), or None without them."""
    for level, kind, data in ancdata:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS) and len(data) >= UCRED_SIZE:
            pid, uid, _ = _UCRED.unpack_from(data)
            return pid, uid
    return None


def _read_proc(path: str) -> bytes:
    """A small ``/proc`` file, in one read (no buffered file object: sudo waits on this)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 8192)
    finally:
        os.close(fd)


def _stat(pid: int) -> tuple[int, int]:
    """``(ppid, sid)`` of a process."""
    data = _read_proc(f"/proc/{pid}/stat")
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[1]), int(fields[3])


def parent_of(pid: int) -> int | None:
    """The parent pid of a process, or None if it is gone."""
    try:
        return _stat(pid)[0]
    except (OSError, ValueError, IndexError):
        return None


def user_name(uid: int) -> str:
    """The account name of ``uid`` (blocking: NSS), or the number when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def identify(
    pid: int, uid: int, user: str, *, until: Callable[[int], bool] = lambda sid: False
) -> Caller:
    """Who ``pid`` is: its real ``uid`` and ``user`` (known before, see :func:`sender`
    and :func:`user_name`), and the session ids up its ancestry, up to the first for which
    ``until`` is true (a managed session: what lies above it decides nothing).

    Raises:
        OSError: the process is gone.
    """
    try:
        own = os.getsid(pid)  # one system call, where /proc would format a whole file
    except OSError:
        raise OSError(f"process {pid} is gone") from None
    if until(own):
        return Caller(pid, uid, user, (own,))
    sids: list[int] = []
    current = pid
    for _ in range(MAX_HOPS):
        try:
            ppid, sid = _stat(current)
        except (OSError, ValueError, IndexError):
            if current == pid:
                raise OSError(f"process {pid} is gone") from None
            break
        if sid not in sids:
            sids.append(sid)
            if until(sid):
                break
        if ppid <= 1:
            break
        current = ppid
    return Caller(pid, uid, user, tuple(sids))


def fleet_member(user: str, uid: int, group: str) -> bool:
    """Whether the account is a member (primary or supplementary) of ``group``."""
    try:
        gid = grp.getgrnam(group).gr_gid
        primary = pwd.getpwuid(uid).pw_gid
    except KeyError:
        return False
    try:
        return gid in os.getgrouplist(user, primary)
    except OSError:
        return False


MAX_LINKS = 40
"""Symbolic links followed at most in one path (the kernel's own limit)."""


def trusted_realpath(path: str) -> str | None:
    """The real path of an absolute ``path``, or None when a user other than root could
    change what it names: sudo would execute the path after the agent decided, so a
    symlink in /tmp could be swapped in between. Used for both patterns and calls.

    One walk resolves the path the way ``os.path.realpath`` does (symlinks followed where
    they stand, ``..`` applied to what they lead to) and looks at everything the
    resolution goes through: each directory, file and symlink (a symlink's target's
    components too, and every link of a chain) must be root's, and anything but a
    symlink writable by nobody else. A missing component, a file that is not the last
    one, a loop or more than :data:`MAX_LINKS` links: None.
    """
    if not path.startswith("/"):
        return None
    pending = path.split("/")
    pending.reverse()  # a stack: the next component last
    real = ""  # what is resolved so far, without its trailing slash ("" is /)
    links = 0
    while pending:
        part = pending.pop()
        if not part or part == ".":
            continue
        if part == "..":
            real = real[: real.rfind("/")]
            continue
        candidate = f"{real}/{part}"
        try:
            st = os.lstat(candidate)
        except (OSError, ValueError):  # ValueError: a NUL in the path
            return None
        if st.st_uid != 0:
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                return None
            try:
                target = os.readlink(candidate)
            except OSError:
                return None
            if target.startswith("/"):
                real = ""
            pending.extend(reversed(target.split("/")))
        elif st.st_mode & 0o022:
            return None
        elif not stat.S_ISDIR(st.st_mode) and any(pending):
            return None  # a file with more path after it (even ".."): the kernel says ENOTDIR
        else:
            real = candidate
    return real or "/"


def is_executable(path: str) -> bool:
    """A regular file with an execute bit (as sudo looks for commands in secure_path)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_mode & 0o170000) == 0o100000 and bool(st.st_mode & 0o111)
