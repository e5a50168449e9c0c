"""A started command's process, awaited through a pidfd instead of a watcher thread.

asyncio's subprocess support on Python 3.11 waits for each child in a thread of its own
(``ThreadedChildWatcher``): one thread started per command, and its exit comes back to the
event loop through a thread hop. On Linux 5.3+ a pidfd becomes readable when the process
exits, so the event loop itself sees the exit; the process is then reaped by
``Popen.poll`` (``waitpid`` of exactly this pid, never of another child). Where
``pidfd_open`` is not available the wait runs in a thread, as asyncio would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Protocol


__all__ = ["Child", "Process"]


class Process(Protocol):
    """What the runner needs of a started command: its pid (= its process group), its
    exit status once reaped, and an async wait for it."""

    pid: int

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), None until reaped."""

    async def wait(self) -> int:
        """Wait until the process has exited and is reaped; its exit status."""


class Child:
    """One child process: its pid, its exit status once reaped, and an async wait."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._exited: asyncio.Future[int] | None = None

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), None until reaped."""
        return self._popen.returncode

    async def wait(self) -> int:
        """Wait until the process has exited and is reaped; its exit status.

        Cancelling a wait leaves the process alone (a later wait resumes watching).
        """
        if self._popen.returncode is not None:
            return self._popen.returncode
        if self._exited is None or self._exited.done():
            self._exited = self._watch()
        return await asyncio.shield(self._exited)

    def _watch(self) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd here: a thread waits instead
            return asyncio.ensure_future(asyncio.to_thread(self._popen.wait))
        exited: asyncio.Future[int] = loop.create_future()

        def readable() -> None:
            status = self._popen.poll()  # waitpid(pid, WNOHANG): this child only
            if status is None:
                return  # not reaped yet (a spurious wake-up)
            loop.remove_reader(pidfd)
            os.close(pidfd)
            if not exited.done():
                exited.set_result(status)

        loop.add_reader(pidfd, readable)
        return exited
