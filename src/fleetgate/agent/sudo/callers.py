"""Who is calling the decision socket: the kernel's answer, with the account name cached.

The peer's pid comes from ``SO_PEERCRED``, its real uid and process sessions from
``/proc`` (:mod:`fleetgate.agent.sudo.proc`), never from what it sends. ``/proc`` is
local and read in the event loop; only the account database (NSS, which may be LDAP) is
asked in a thread, and its answer cached (:class:`~fleetgate.agent.exec.idcache.NameCache`).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from fleetgate.agent.exec.idcache import NameCache, files_signature
from fleetgate.agent.sudo import proc
from fleetgate.agent.sudo.request import BadRequest


__all__ = ["Callers"]


class Callers:
    """Identifies the process at the other end of a decision socket connection.

    ``known(sid)`` says whether a process session is one the agent registered: the walk
    up the caller's ancestry stops at the first (what lies above decides nothing).
    """

    def __init__(self, known: Callable[[int], bool]) -> None:
        self._known = known
        self._names = NameCache()

    def cached(self, conn: socket.socket) -> proc.Caller | None:
        """The caller, or None when its account name is not cached (see :meth:`look_up`).

        Raises:
            BadRequest: the peer is not root (only sudo's plugin may ask).
            OSError: the process is gone.
        """
        pid, uid = _peer(conn)
        user = self._names.get(uid, now=time.monotonic(), signature=files_signature())
        if user is None:
            return None
        return proc.identify(pid, uid, user, until=self._known)

    async def look_up(self, conn: socket.socket) -> proc.Caller:
        """The caller, its account name looked up (in a thread) when not cached.

        Raises:
            BadRequest: the peer is not root.
            OSError: the process is gone.
        """
        pid, uid = _peer(conn)
        now, signature = time.monotonic(), files_signature()
        user = self._names.get(uid, now=now, signature=signature)
        if user is None:
            user = await asyncio.to_thread(proc.user_name, uid)
            self._names.put(uid, user, now=now, signature=signature)
        return proc.identify(pid, uid, user, until=self._known)


def _peer(conn: socket.socket) -> tuple[int, int]:
    """``(pid, real uid)`` of the peer: sudo is setuid root, so the kernel's peer uid is
    its effective one (root, or it is not sudo) and the caller's is read from ``/proc``."""
    pid, peer_uid, _ = proc.peer_credentials(conn)
    if peer_uid != 0:
        raise BadRequest(f"peer uid {peer_uid} is not root")
    return pid, proc.real_uid(pid)
