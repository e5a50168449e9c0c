"""Stopping a command before it ends on its own: its work session ended.

A command started under a work session may do no more than the session allows; once the
session is revoked, completed or expired, whatever still runs under it is stopped (as the
control plane ends the session's terminals, transfers and tunnels). The dispatcher holds
one :class:`StopRequest` per command of a session in :class:`SessionStops` and sets it when
the agent hears of the end; the runner waits for the process *or* the request, then stops
the process group as it does at a timeout. A command still waiting for its slot is not
started at all.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from uuid import UUID

from fleetgate.agent.exec.child import Process


__all__ = [
    "ENDED_SESSIONS_KEPT",
    "STOPPED_CODE",
    "SessionStops",
    "StopRequest",
    "exited_or_stopped",
]

STOPPED_CODE = "work_session_ended"
"""The stable code of a command stopped because its work session ended."""


class StopRequest:
    """A one-way switch: once :meth:`stop` is called, the command should stop."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason = ""

    @property
    def stopped(self) -> bool:
        """Whether the stop was asked for."""
        return self._event.is_set()

    def stop(self, reason: str) -> None:
        """Ask the command to stop; the first reason given is the one reported."""
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    async def wait(self) -> None:
        """Return once the stop is asked for."""
        await self._event.wait()


ENDED_SESSIONS_KEPT = 1024
"""Ended work sessions remembered (the oldest forgotten first): enough for any command
of one that was in flight when its end arrived."""


class SessionStops:
    """The stop switches of the accepted, unfinished commands of work sessions, and the
    sessions that ended lately (a command of one still on its way to the dispatcher's
    intake when the end arrived gets a switch already set). No I/O, no event loop."""

    def __init__(self, kept: int = ENDED_SESSIONS_KEPT) -> None:
        self._kept = kept
        self._stops: dict[str, dict[UUID, StopRequest]] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()

    def register(self, work_session: str, command_id: UUID) -> StopRequest:
        """The switch of a command of ``work_session``, set at once if the session ended;
        registered until :meth:`forget`."""
        stop = StopRequest()
        ended = self._ended.get(work_session)
        if ended is not None:
            stop.stop(ended)
        self._stops.setdefault(work_session, {})[command_id] = stop
        return stop

    def forget(self, work_session: str, command_id: UUID) -> None:
        """Drop a finished command's switch (nothing if it has none)."""
        stops = self._stops.get(work_session)
        if stops is not None:
            stops.pop(command_id, None)
            if not stops:
                del self._stops[work_session]

    def end(self, work_session: str, reason: str) -> list[UUID]:
        """Remember that ``work_session`` ended and set the switch of each of its commands;
        returns their ids."""
        self._ended[work_session] = reason
        self._ended.move_to_end(work_session)
        while len(self._ended) > self._kept:
            self._ended.popitem(last=False)
        stops = self._stops.get(work_session, {})
        for stop in stops.values():
            stop.stop(reason)
        return list(stops)


async def exited_or_stopped(proc: Process, stop: StopRequest | None) -> bool:
    """Wait until ``proc`` exits or ``stop`` is asked for; True when stopped first (the
    process may then still run: stopping it is the caller's)."""
    if stop is None:
        await proc.wait()
        return False
    if stop.stopped:
        return True
    async with asyncio.TaskGroup() as tg:
        exited = tg.create_task(proc.wait(), name="command-wait")
        asked = tg.create_task(stop.wait(), name="command-stop")
        await asyncio.wait((exited, asked), return_when=asyncio.FIRST_COMPLETED)
        # The process's exit wins a tie: a command that ended on its own is reported as such.
        stopped = not exited.done()
        exited.cancel()
        asked.cancel()
    return stopped
