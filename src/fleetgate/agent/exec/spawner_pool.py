"""Several spawner helpers (:mod:`fleetgate.agent.exec.spawner`) used as one.

A helper starts one command at a time: ``Popen`` returns only once the child has exec'd
(so that a failed exec is reported), which takes about a millisecond. Under a burst one
helper would start the commands one after the other while the other core idles.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleetgate.agent.exec.identity import Identity
from fleetgate.agent.exec.spawner import RemoteChild, Spawner


__all__ = ["SpawnerPool"]


class SpawnerPool:
    """Up to ``size`` helpers. A helper starts one command at a time (``Popen`` returns
    once the child has exec'd), so a start goes to an idle helper; another helper is
    started only when every running one is busy starting."""

    def __init__(self, size: int) -> None:
        self.helpers = [Spawner() for _ in range(size)]

    async def spawn(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        cwd: str,
        identity: Identity,
        stdout_fd: int,
    ) -> RemoteChild:
        """As :meth:`Spawner.spawn`, on the least busy helper."""
        running = [h for h in self.helpers if h.pid is not None]
        idle = [h for h in running if h.starting == 0]
        stopped = [h for h in self.helpers if h.pid is None]
        if idle:
            helper = idle[0]
        elif stopped:
            helper = stopped[0]
        else:
            helper = min(running, key=lambda h: h.starting)
        return await helper.spawn(argv, env, cwd, identity, stdout_fd)

    def close(self) -> None:
        """End every helper (see :meth:`Spawner.close`)."""
        for helper in self.helpers:
            helper.close()
