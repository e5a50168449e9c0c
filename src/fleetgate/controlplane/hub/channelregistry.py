"""The registry of every open channel and who opened it (pure: no I/O).

:class:`ChannelRegistry` records every relayed channel (terminal, transfer, tunnel
stream, and any later kind: a route registers its channel before relaying it) with its
:class:`ChannelOwner`: the token and user that opened it and its work session. One call,
:meth:`ChannelRegistry.end`, ends every channel a :class:`Revocation` matches: a deleted
token, a disabled user, an ended work session. The registry also remembers recent
revocations, so a channel whose gate passed just before its token was deleted is refused
when it registers instead of outliving the revocation.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetgate.controlplane.errors import ChannelFailed
from fleetgate.shared.protocol.channels import CLOSE_REFUSED


__all__ = [
    "MAX_OPEN",
    "MAX_REMEMBERED",
    "ChannelOwner",
    "ChannelRegistry",
    "OpenChannel",
    "Revocation",
]

MAX_OPEN = 65_536
"""Channels relayed at once by this control plane; beyond this, refused."""
MAX_REMEMBERED = 4096
"""Recent revocations a new channel is checked against (older ones are in the database:
their tokens no longer authenticate, their sessions no longer pass the gate)."""


@dataclass(frozen=True, slots=True)
class ChannelOwner:
    """Who opened a channel: the token, its user (``None``: a service), the work session."""

    token_id: str
    user_id: int | None
    work_session_id: str | None


@dataclass(frozen=True, slots=True)
class Revocation:
    """What was revoked (any field given matches) and the code and detail a client sees.

    ``code`` is one of :data:`fleetgate.shared.protocol.channels.REVOCATION_CODES`.
    """

    code: str
    detail: str
    token_id: str | None = None
    user_id: int | None = None
    work_session_id: str | None = None

    def matches(self, owner: ChannelOwner) -> bool:
        """Whether a channel (or terminal, tunnel) of ``owner`` falls under this revocation."""
        return (
            (self.token_id is not None and owner.token_id == self.token_id)
            or (self.user_id is not None and owner.user_id == self.user_id)
            or (self.work_session_id is not None and owner.work_session_id == self.work_session_id)
        )


@dataclass(eq=False)
class OpenChannel:
    """One relayed channel. ``ended`` is set when it must stop; ``why`` says why."""

    channel_id: uuid.UUID
    kind: str
    server_id: str
    owner: ChannelOwner
    resource_id: str | None = None
    """What the channel belongs to: the terminal or the tunnel (``None``: a transfer)."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    why: tuple[str, str] | None = None
    on_end: Callable[[], None] | None = None
    """Called (once) when the channel is ended, while its route relays it."""

    def end(self, code: str, detail: str) -> bool:
        """Ask the channel's route to stop (the first reason wins); False if it was asked."""
        if self.ended.is_set():
            return False
        self.why = (code, detail)
        self.ended.set()
        if self.on_end is not None:
            self.on_end()
        return True


class ChannelRegistry:
    """Every channel this control plane relays now, indexed by id and by resource."""

    def __init__(self, max_open: int = MAX_OPEN) -> None:
        self._max_open = max_open
        self._open: dict[uuid.UUID, OpenChannel] = {}
        self._by_resource: dict[str, set[uuid.UUID]] = {}
        # Keyed by what was revoked (("token", id), ("user", id), ("session", id)), oldest
        # first, at most MAX_REMEMBERED: a lookup is three dict reads, not a scan.
        self._revoked: OrderedDict[tuple[str, str], Revocation] = OrderedDict()

    def register(self, channel: OpenChannel) -> None:
        """Record a channel before it is relayed.

        Raises:
            ChannelFailed: the channel's owner was just revoked (4403 with the revocation's
                code), or too many channels are open.
        """
        revoked = self.revoked(channel.owner)
        if revoked is not None:
            raise ChannelFailed(revoked.code, revoked.detail, CLOSE_REFUSED)
        if len(self._open) >= self._max_open or channel.channel_id in self._open:
            raise ChannelFailed("busy", "too many open channels", CLOSE_REFUSED)
        self._open[channel.channel_id] = channel
        if channel.resource_id is not None:
            self._by_resource.setdefault(channel.resource_id, set()).add(channel.channel_id)

    def unregister(self, channel: OpenChannel) -> None:
        """Forget a channel that ended."""
        if self._open.pop(channel.channel_id, None) is None:
            return
        if channel.resource_id is not None:
            ids = self._by_resource.get(channel.resource_id)
            if ids is not None:
                ids.discard(channel.channel_id)
                if not ids:
                    del self._by_resource[channel.resource_id]

    def reinstate_user(self, user_id: int) -> None:
        """A disabled user was enabled again: forget their ``user_disabled`` revocation."""
        self._revoked.pop(("user", str(user_id)), None)

    def revoked(self, owner: ChannelOwner) -> Revocation | None:
        """The remembered revocation that covers ``owner``, if any."""
        for key in _keys(owner.token_id, owner.user_id, owner.work_session_id):
            found = self._revoked.get(key)
            if found is not None:
                return found
        return None

    def _remember(self, revocation: Revocation) -> None:
        r = revocation
        for key in _keys(r.token_id, r.user_id, r.work_session_id):
            self._revoked[key] = revocation
            self._revoked.move_to_end(key)
        while len(self._revoked) > MAX_REMEMBERED:
            self._revoked.popitem(last=False)

    def count(self, resource_id: str) -> int:
        """Channels open now for ``resource_id`` (a tunnel's streams)."""
        return len(self._by_resource.get(resource_id, ()))

    def matching(self, predicate: Callable[[OpenChannel], bool]) -> list[OpenChannel]:
        """The open channels ``predicate`` selects."""
        return [c for c in self._open.values() if predicate(c)]

    def end(
        self, predicate: Callable[[OpenChannel], bool], code: str, detail: str
    ) -> list[OpenChannel]:
        """Ask every open channel ``predicate`` selects to stop with ``code``; returns them."""
        chosen = self.matching(predicate)
        for channel in chosen:
            channel.end(code, detail)
        return chosen

    def revoke(self, revocation: Revocation) -> list[OpenChannel]:
        """End every channel ``revocation`` covers and refuse new ones of its owner."""
        self._remember(revocation)
        return self.end(lambda c: revocation.matches(c.owner), revocation.code, revocation.detail)

    def end_resource(self, resource_id: str, code: str, detail: str) -> list[OpenChannel]:
        """End the channels of one terminal or tunnel."""
        ids = self._by_resource.get(resource_id, set())
        return self.end(lambda c: c.channel_id in ids, code, detail)


def _keys(
    token_id: str | None, user_id: int | None, work_session_id: str | None
) -> list[tuple[str, str]]:
    keys = []
    if token_id is not None:
        keys.append(("token", token_id))
    if user_id is not None:
        keys.append(("user", str(user_id)))
    if work_session_id is not None:
        keys.append(("session", work_session_id))
    return keys
