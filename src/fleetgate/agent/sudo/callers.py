"""Who is calling the decision socket: the kernel's answer, with the account database's
answers cached.

The sender's pid and real uid come with its datagram from the kernel
(:func:`fleetgate.agent.sudo.proc.sender`), its process sessions from ``/proc``
(:mod:`fleetgate.agent.sudo.proc`), never from what it sends. ``/proc`` is local and read in
the event loop; only the account database (NSS, which may be LDAP) is asked in a thread:
the caller's name, and for a caller outside the agent's sessions whether it is a member of
the fleet sudo group. Both answers are cached (:class:`~fleetgate.agent.exec.idcache.
AccountCache`: at most 2 s, and a change of ``/etc/passwd``, ``/etc/group`` or
``/etc/nsswitch.conf`` takes effect at the next call). A call inside a work session is
decided without the name, so the files are looked at after its answer: its audit record
names the caller as known at most 2 s before (the uid, the kernel's, is exact).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

from fleetgate.agent.exec.idcache import AccountCache, files_signature
from fleetgate.agent.sudo import proc


__all__ = ["Callers"]


class Callers:
    """Identifies the process that sent a decision request.

    ``known(sid)`` says whether a process session is one the agent registered: the walk
    up the caller's ancestry stops at the first (what lies above decides nothing).
    ``group`` is the fleet sudo group (``sudo.group``).
    """

    def __init__(self, known: Callable[[int], bool], group: str) -> None:
        self._known = known
        self._group = group
        self._names: AccountCache[int, str] = AccountCache()
        self._members: AccountCache[int, bool] = AccountCache()

    def cached(self, pid: int, uid: int) -> proc.Caller | None:
        """The caller, or None when its account name is not cached (see :meth:`look_up`).

        The name is one looked up less than the TTL ago, not checked against the account
        files (three ``stat`` calls, on the path of every answer): a decision inside a
        work session does not depend on it, and its record checks it after the answer
        (:meth:`check_name`); one outside them checks it (:meth:`cached_member`).

        Raises:
            OSError: the process is gone.
        """
        user = self._names.recent(uid, now=time.monotonic())
        if user is None:
            return None
        return proc.identify(pid, uid, user, until=self._known)

    def check_name(self, uid: int) -> None:
        """Forget the cached name of ``uid`` if the account files changed since it was
        looked up: the next call looks it up again."""
        self._names.get(uid, now=time.monotonic(), signature=files_signature())

    async def look_up(self, pid: int, uid: int) -> proc.Caller:
        """The caller, its account name looked up (in a thread) when not cached or out of
        date.

        Raises:
            OSError: the process is gone.
        """
        user = await self._name(uid)
        return proc.identify(pid, uid, user, until=self._known)

    async def checked(self, caller: proc.Caller) -> proc.Caller:
        """``caller`` with its name as the account files say now (looked up again, in a
        thread, when they changed since)."""
        user = await self._name(caller.uid)
        return caller if user == caller.user else replace(caller, user=user)

    async def _name(self, uid: int) -> str:
        now, signature = time.monotonic(), files_signature()
        user = self._names.get(uid, now=now, signature=signature)
        if user is None:
            user = await asyncio.to_thread(proc.user_name, uid)
            self._names.put(uid, user, now=now, signature=signature)
        return user

    def cached_member(self, caller: proc.Caller) -> bool | None:
        """Whether the caller is in the fleet sudo group, or None when that, or its name,
        is not cached or out of date (the account files are looked at once)."""
        now, signature = time.monotonic(), files_signature()
        if self._names.get(caller.uid, now=now, signature=signature) != caller.user:
            return None
        return self._members.get(caller.uid, now=now, signature=signature)

    async def member(self, caller: proc.Caller) -> bool:
        """Whether the caller (its name checked, see :meth:`checked`) is in the fleet
        sudo group, looked up (in a thread) when not cached."""
        now, signature = time.monotonic(), files_signature()
        found = self._members.get(caller.uid, now=now, signature=signature)
        if found is None:
            found = await asyncio.to_thread(proc.fleet_member, caller.user, caller.uid, self._group)
            self._members.put(caller.uid, found, now=now, signature=signature)
        return found
