"""The process sessions the agent started, and what each may do with sudo.

A websh shell or a command started by the agent leads its own process session (setsid),
so every process inside it, and the ``sudo`` it runs, carries that session id. The
decision server finds the caller's session id through the kernel and looks it up here.
Entries live while their process does (the owner unregisters them when it ends); when the
control plane says a work session ended, every entry of it is marked ended at once, so a
sudo still in flight or started later from that shell is refused.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import structlog

from fleetgate.agent.policy.sudo_decision import SessionGrant
from fleetgate.shared.protocol import GrantClaims


__all__ = ["SudoSessions"]

log = structlog.get_logger(__name__)

MAX_ENDED = 1024
"""Work sessions remembered as ended (bounded; older ones expire by their own clock)."""


class SudoSessions:
    """Registry of managed process sessions: ``sid`` -> :class:`SessionGrant`."""

    def __init__(self) -> None:
        # None: started by the agent without a work session (a token's command): its
        # sudo calls follow the unmanaged policy.
        self._entries: dict[int, SessionGrant | None] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def register(self, sid: int, claims: GrantClaims | None, *, label: str) -> None:
        """Mediate sudo in process session ``sid`` by the grant's work session.

        ``sid`` is the session leader's pid (a websh shell or a command). A grant without
        the ``sudo`` scope is registered too: sudo from it is then refused, not left to
        the unmanaged policy. Without a work-session grant (``None``, a token's grant)
        the session is known but unmanaged.
        """
        if claims is None or claims.auth != "work_session":
            self._entries[sid] = None
            return
        ended = claims.work_session is not None and claims.work_session in self._ended
        self._entries[sid] = SessionGrant(
            label=label,
            work_session=claims.work_session,
            assignee=claims.assignee,
            scopes=frozenset(claims.scopes),
            expires_at=None if claims.expires_at is None else float(claims.expires_at),
            patterns=tuple(claims.sudo),
            ended=ended,
        )
        log.debug("sudo.session_registered", sid=sid, label=label, work_session=claims.work_session)

    def unregister(self, sid: int) -> None:
        """The session's process ended: forget it (unknown sids are ignored)."""
        self._entries.pop(sid, None)

    def known(self, sid: int) -> bool:
        """Whether the agent registered ``sid`` (managed or not)."""
        return sid in self._entries

    def lookup(self, sid: int) -> SessionGrant | None:
        """The grant of a managed session, or None."""
        return self._entries.get(sid)

    def end_work_session(self, work_session: str) -> int:
        """Revoke everything of ``work_session`` at once; returns how many process
        sessions it had here."""
        self._ended[work_session] = None
        self._ended.move_to_end(work_session)
        while len(self._ended) > MAX_ENDED:
            self._ended.popitem(last=False)
        hit = 0
        for sid, grant in list(self._entries.items()):
            if grant is not None and grant.work_session == work_session and not grant.ended:
                self._entries[sid] = replace(grant, ended=True)
                hit += 1
        log.info("sudo.work_session_ended", work_session=work_session, sessions=hit)
        return hit

    def snapshot(self) -> list[dict[str, object]]:
        """For ``fleetgate-agent status``: the managed sessions (at most 100)."""
        return [
            {
                "sid": sid,
                "label": None if g is None else g.label,
                "work_session": None if g is None else g.work_session,
                "ended": None if g is None else g.ended,
            }
            for sid, g in list(self._entries.items())[:100]
        ]
