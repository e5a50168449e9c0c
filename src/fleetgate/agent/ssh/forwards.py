"""The port forwards of one SSH connection (``ssh -L``, ``ssh -R``), counted against the
``[tunnel]`` stream limits like the streams of a tunnel.

Every forwarded TCP connection is an SSH channel that asyncssh creates with the
connection's ``create_tcp_channel``, whichever side asked for it (``-L``: the client opens
it; ``-R``: a connection accepted on the server's listener is carried back). Counting
there, and giving the slot back when the channel closes, covers both directions; at the
limit the channel is refused with SSH's "resource shortage" and the reason, and the
client's TCP connection is closed. The connection counts as one tunnel
(``max_streams_per_tunnel``), and all of them with the tunnels' streams (``max_streams``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any
from uuid import UUID

import asyncssh

from fleetgate.agent.ssh.context import SshRefusal
from fleetgate.agent.tunnel.policy import StreamBook, StreamSlots


__all__ = ["Forwards"]

Spawn = Callable[[Coroutine[Any, Any, None]], bool]
"""Runs a coroutine in the connection's task group; ``False`` (coroutine closed) once the
connection has ended."""


class Forwards:
    """The forwarded streams one SSH connection holds in the agent's :class:`StreamBook`."""

    def __init__(self, book: StreamBook, key: UUID) -> None:
        self._slots = StreamSlots(book, key)

    @property
    def held(self) -> int:
        """Forwarded streams open now."""
        return self._slots.held

    def refusal(self) -> SshRefusal | None:
        """Why one more forwarded stream would exceed a limit, if it would (no change)."""
        refusal = self._slots.book.refusal(self._slots.key)
        return None if refusal is None else SshRefusal(refusal.code, refusal.message)

    def install(
        self,
        conn: asyncssh.SSHServerConnection,
        spawn: Spawn,
        refused: Callable[[SshRefusal], None],
    ) -> None:
        """Count every TCP channel ``conn`` creates from now on; ``refused`` hears of each
        one a limit refuses."""
        create = conn.create_tcp_channel

        def counted(*args: Any, **kwargs: Any) -> asyncssh.SSHTCPChannel[Any]:
            limit = self._slots.take()
            if limit is not None:
                why = SshRefusal(limit.code, limit.message)
                refused(why)
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_RESOURCE_SHORTAGE, f"fleetgate: {why.detail}"
                )
            try:
                chan = create(*args, **kwargs)
                if not spawn(self._give_back_when_closed(chan)):
                    raise asyncssh.ChannelOpenError(
                        asyncssh.OPEN_CONNECT_FAILED, "fleetgate: the connection is ending"
                    )
            except BaseException:
                self._slots.give_back()
                raise
            return chan

        conn.create_tcp_channel = counted  # type: ignore[method-assign]

    async def _give_back_when_closed(self, chan: asyncssh.SSHTCPChannel[Any]) -> None:
        try:
            await chan.wait_closed()
        finally:
            self._slots.give_back()

    def close(self) -> None:
        """Give back every slot still held: the connection has ended (a channel's watcher
        may not have run)."""
        self._slots.give_back_all()
