"""Who is calling the decision socket: the kernel's answer, with the account database's
answers cached.

The sender's pid and real uid come with its datagram from the kernel
(:func:`fleetgate.agent.sudo.proc.sender`), its process sessions from ``/proc``
(:mod:`fleetgate.agent.sudo.proc`), never from what it sends. ``/proc`` is local and read in
the event loop; only the account database (NSS, which may be LDAP) is asked in a thread:
the caller's name, and for a caller outside the agent's sessions whether it is a member of
the fleet sudo group. Both answers are cached (:class:`~fleetgate.agent.exec.idcache.
AccountCache`: at most 2 s, and a change of ``/etc/passwd``, ``/etc/group`` or
``/etc/nsswitch.conf`` takes effect at the next call).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

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

        Raises:
            OSError: the process is gone.
        """
        user = self._names.get(uid, now=time.monotonic(), signature=files_signature())
        if user is None:
            return None
        return proc.identify(pid, uid, user, until=self._known)

    async def look_up(self, pid: int, uid: int) -> proc.Caller:
        """The caller, its account name looked up (in a thread) when not cached.

        Raises:
            OSError: the process is gone.
        """
        now, signature = time.monotonic(), files_signature()
        user = self._names.get(uid, now=now, signature=signature)
        if user is None:
            user = await asyncio.to_thread(proc.user_name, uid)
            self._names.put(uid, user, now=now, signature=signature)
        return proc.identify(pid, uid, user, until=self._known)

    def cached_member(self, caller: proc.Caller) -> bool | None:
        """Whether the caller is in the fleet sudo group, or None when not cached."""
        return self._members.get(caller.uid, now=time.monotonic(), signature=files_signature())

    async def member(self, caller: proc.Caller) -> bool:
        """Whether the caller is in the fleet sudo group, looked up (in a thread) when not
        cached."""
        now, signature = time.monotonic(), files_signature()
        found = self._members.get(caller.uid, now=now, signature=signature)
        if found is None:
            found = await asyncio.to_thread(proc.fleet_member, caller.user, caller.uid, self._group)
            self._members.put(caller.uid, found, now=now, signature=signature)
        return found
