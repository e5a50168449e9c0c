"""A short-lived cache of resolved identities, so a burst of commands skips the lookups.

Resolving an identity reads the account databases through NSS (``getpwnam``,
``getgrouplist``) and stats the home directory; both may block (LDAP, NFS), so they run in
a worker thread, which costs a thread hop per command. An entry here is reused only while

* it is younger than :data:`TTL` seconds, and
* ``/etc/passwd``, ``/etc/group`` and ``/etc/nsswitch.conf`` are unchanged (inode, size,
  modification time), so ``usermod``/``gpasswd``/``userdel`` take effect at the very next
  command, as without the cache.

Accounts from a directory service (LDAP, sssd) can therefore be up to :data:`TTL` seconds
older than NSS's own cache would make them; NSS caches such entries for minutes anyway.
Pure bookkeeping apart from the ``stat`` calls on local files; not thread-safe (the event
loop is its only user).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from fleetgate.agent.exec.identity import Identity


__all__ = [
    "ACCOUNT_FILES",
    "MAX_ENTRIES",
    "TTL",
    "AccountCache",
    "IdentityCache",
    "files_signature",
]

TTL = 2.0
"""Seconds an entry is reused at most."""

MAX_ENTRIES = 256
"""Entries kept at most; the oldest is dropped first."""

ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/nsswitch.conf")
"""Files whose change invalidates every entry."""

Signature = tuple[tuple[int, int, int], ...]
_Key = tuple[str, str]
K = TypeVar("K")
V = TypeVar("V")


def files_signature(paths: tuple[str, ...] = ACCOUNT_FILES) -> Signature:
    """``(inode, size, mtime_ns)`` of each file (zeros for a missing one)."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((0, 0, 0))
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Entry:
    identity: Identity
    cwd: str
    signature: Signature
    expires: float


class IdentityCache:
    """``(username, groupname)`` -> the identity and working directory last resolved."""

    def __init__(self, *, ttl: float = TTL, max_entries: int = MAX_ENTRIES) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()

    def get(
        self, username: str, groupname: str | None, *, now: float, signature: Signature
    ) -> tuple[Identity, str] | None:
        """The cached identity and cwd, or None when absent, expired or out of date."""
        key = (username, groupname or "")
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.expires or entry.signature != signature:
            del self._entries[key]
            return None
        return entry.identity, entry.cwd

    def put(
        self,
        username: str,
        groupname: str | None,
        identity: Identity,
        cwd: str,
        *,
        now: float,
        signature: Signature,
    ) -> None:
        """Remember a resolution; ``signature`` must be taken *before* the lookup, so a
        change of the files during the lookup makes the entry stale at once."""
        key = (username, groupname or "")
        self._entries.pop(key, None)
        self._entries[key] = _Entry(identity, cwd, signature, now + self._ttl)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class AccountCache(Generic[K, V]):
    """A key -> what the account databases answered for it (an account's name, its
    membership of a group), under the same rules as :class:`IdentityCache`."""

    def __init__(self, *, ttl: float = TTL, max_entries: int = MAX_ENTRIES) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._entries: OrderedDict[K, tuple[V, Signature, float]] = OrderedDict()

    def get(self, key: K, *, now: float, signature: Signature) -> V | None:
        """The cached answer, or None when absent, expired or out of date."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, seen, expires = entry
        if now >= expires or seen != signature:
            del self._entries[key]
            return None
        return value

    def recent(self, key: K, *, now: float) -> V | None:
        """The answer if it is younger than the TTL, whether or not the account files
        changed since (for what may be checked after it was used: see :meth:`get`)."""
        entry = self._entries.get(key)
        if entry is None or now >= entry[2]:
            return None
        return entry[0]

    def put(self, key: K, value: V, *, now: float, signature: Signature) -> None:
        """Remember an answer; ``signature`` taken before the lookup (see ``IdentityCache``)."""
        self._entries.pop(key, None)
        self._entries[key] = (value, signature, now + self._ttl)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
