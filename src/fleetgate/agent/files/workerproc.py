"""Starting a file worker as the user, reading its output socket, and ending it.

The agent never opens the user's files itself: it starts the worker
(``python -I -m fleetgate.agent.files.worker``) with the user's exact uid, gid and groups
(setpriv, as commands are started) and a clean environment, in its own session so that
it is killed as a group. The worker's stdout is a Unix socket (:class:`PipeReader`): it
can carry a descriptor along with a frame (a ``handover``, SCM_RIGHTS).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys

from fleetgate.agent.exec.identity import Identity, build_environment
from fleetgate.agent.exec.spawn import find_setpriv, needs_switch, privilege_argv
from fleetgate.shared.errors import TransferError


__all__ = ["PIPE_BYTES", "PipeReader", "kill_worker", "reap_worker", "start_worker"]

WORKER_ARGV = (sys.executable, "-I", "-m", "fleetgate.agent.files.worker")
PIPE_BYTES = 1 << 20
_MAX_FDS = 4
"""Descriptors one read may carry (the worker sends one; more are closed at once)."""
REAP_GRACE = 5.0
"""Seconds a worker gets to finish after its stdin closed (an upload fsyncs its part)."""


class PipeReader:
    """Reads the worker's stdout socket straight into the caller's buffer (no stream buffer,
    no copy per frame beyond the kernel's), waiting for readability on the event loop.

    Descriptors that come along (``handover``) are kept, close-on-exec, for :meth:`take_fd`.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fds: list[int] = []

    async def readinto(self, view: memoryview) -> bool:
        """Fill ``view``; False on EOF before its first byte (EOFError after it)."""
        got = 0
        while got < len(view):
            try:
                n, ancdata, _, _ = self.sock.recvmsg_into(
                    [view[got:]], socket.CMSG_SPACE(_MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                await self._readable()
                continue
            self._keep_fds(ancdata)
            if n == 0:
                if got == 0:
                    return False
                raise EOFError("the worker's output ended inside a frame")
            got += n
        return True

    def _keep_fds(self, ancdata: list[tuple[int, int, bytes]]) -> None:
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(data) - len(data) % 4
                self.fds.extend(int.from_bytes(data[i : i + 4], sys.byteorder, signed=True)
                                for i in range(0, usable, 4))  # fmt: skip

    def discard_fds(self) -> None:
        """Close descriptors that came with a frame that is not a handover (none should)."""
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)

    def take_fd(self) -> int:
        """The descriptor that came with the last frame (others are closed).

        Raises:
            TransferError: none came.
        """
        fds, self.fds = self.fds, []
        for extra in fds[1:]:
            os.close(extra)
        if not fds:
            raise TransferError("internal", "the worker's handover carried no descriptor")
        return fds[0]

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(self.sock.fileno(), ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_reader(self.sock.fileno())

    def close(self) -> None:
        """Close the read end (and any descriptor nobody took)."""
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.sock.close()


async def start_worker(identity: Identity) -> tuple[asyncio.subprocess.Process, PipeReader]:
    """Start a worker as ``identity`` in its own session (killed as a group)."""
    argv = list(WORKER_ARGV)
    switch = needs_switch(identity)
    setpriv = find_setpriv()
    if switch and setpriv is not None:
        argv, switch = privilege_argv(setpriv, identity, argv), False
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for option in (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            theirs.setsockopt(socket.SOL_SOCKET, option, PIPE_BYTES)  # a chunk in one go
            break
    try:
        proc = await _spawn(argv, identity, switch, theirs.fileno())
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()  # ours must go, or the socket never reports EOF
    return proc, PipeReader(ours)


async def _spawn(
    argv: list[str], identity: Identity, switch: bool, stdout: int
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=build_environment(identity, {}),
        cwd="/",
        start_new_session=True,
        user=identity.uid if switch else None,
        group=identity.gid if switch else None,
        extra_groups=list(identity.groups) if switch else None,
    )


async def reap_worker(proc: asyncio.subprocess.Process) -> None:
    """Wait for the worker; after a grace period, kill its process group."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    if proc.returncode is not None:
        return
    try:
        async with asyncio.timeout(REAP_GRACE):
            await asyncio.shield(proc.wait())
            return
    except TimeoutError:
        pass
    except asyncio.CancelledError:
        kill_worker(proc)
        await asyncio.shield(proc.wait())
        raise
    kill_worker(proc)
    await proc.wait()


def kill_worker(proc: asyncio.subprocess.Process) -> None:
    """Kill the worker's process group (it may already be gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
