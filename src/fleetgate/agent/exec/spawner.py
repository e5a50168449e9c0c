"""The agent's side of the spawner helper (:mod:`fleetgate.agent.exec.spawner_main`).

The helper is started at the first command that must change identity, not with the agent,
so an idle agent has no extra process and loads none of this. It is reached only through
a ``socketpair`` inherited at its start (our end is close-on-exec, so no command inherits
it); it forks each command from its own small address space and owns the wait: it sends
the pid once the command has exec'd, then its exit status once reaped. Killing stays the
agent's: it signals the command's process group directly, as root.

If the helper dies, every command it started is killed (its exit status could no longer
be known) and reported as killed by SIGKILL; a start it had not confirmed is a start
error (never retried: the command may have started). The next command starts a new
helper. ``exec.spawner_lost`` and ``exec.spawner_started`` say so in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from fleetgate.agent.errors import PrivilegeError
from fleetgate.agent.exec import spawner_main
from fleetgate.agent.exec.identity import Identity
from fleetgate.shared.writable import wait_writable


__all__ = ["RemoteChild", "Spawner", "SpawnerUnavailable"]

_log = structlog.get_logger(__name__)

_HELPER = str(Path(spawner_main.__file__).resolve())
_HEADER = spawner_main.HEADER
_READ_SIZE = 64 * 1024
_MAX_PENDING_BYTES = 1024 * 1024
"""Replies are a few dozen bytes; more than this unparsed means a broken helper."""


class SpawnerUnavailable(Exception):
    """The helper process could not be started (the caller falls back)."""


class RemoteChild:
    """A command started by the helper: its pid, its exit status once reaped, a wait."""

    def __init__(self, pid: int, exited: asyncio.Future[int]) -> None:
        self.pid = pid
        self._exited = exited

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), None until reaped."""
        if self._exited.done() and not self._exited.cancelled():
            return self._exited.result()
        return None

    async def wait(self) -> int:
        """Wait until the helper has reaped the process; cancelling leaves it alone."""
        return await asyncio.shield(self._exited)


class Spawner:
    """One helper process, started on demand and again after it died."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._pidfd = -1
        self._buffer = bytearray()
        self._next_id = 0
        self._starts: dict[int, asyncio.Future[int]] = {}  # id -> pid
        self._exits: dict[int, tuple[int, asyncio.Future[int]]] = {}  # id -> pid, status
        self._send_lock = asyncio.Lock()
        self._lost = False

    @property
    def pid(self) -> int | None:
        """The helper's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._sock is not None else None

    @property
    def starting(self) -> int:
        """Starts sent and not yet confirmed (the helper does one at a time)."""
        return len(self._starts)

    async def spawn(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        cwd: str,
        identity: Identity,
        stdout_fd: int,
    ) -> RemoteChild:
        """Start ``argv`` as exactly ``identity`` with ``stdout_fd`` as stdout and stderr.

        Raises:
            SpawnerUnavailable: the helper could not be started.
            OSError: the command could not start (errno, message and file as exec's).
            PrivilegeError: the identity has no group list (never from resolve_identity).
        """
        if not identity.groups:  # setgroups would be skipped: the child kept root's groups
            raise PrivilegeError(f"no group list for {identity.name!r}")
        loop = asyncio.get_running_loop()
        if self._sock is None or self._loop is not loop:
            self._start(loop)
        sock = self._sock
        assert sock is not None
        self._next_id += 1
        rid = self._next_id
        body = json.dumps(
            {
                "id": rid,
                "argv": list(argv),
                "env": env,
                "cwd": cwd,
                "uid": identity.uid,
                "gid": identity.gid,
                "groups": list(identity.groups),
            }
        ).encode()
        started: asyncio.Future[int] = loop.create_future()
        exited: asyncio.Future[int] = loop.create_future()
        # Both registered before the request leaves: the exit may come in the same read
        # as the pid, before this coroutine resumes.
        self._starts[rid] = started
        self._exits[rid] = (0, exited)
        try:
            async with self._send_lock:
                await self._send(sock, _HEADER.pack(len(body)) + body, stdout_fd)
            pid = await asyncio.shield(started)
        except BaseException:
            self._starts.pop(rid, None)
            self._exits.pop(rid, None)
            if started.done() and not started.cancelled() and started.exception() is None:
                # Started, but its caller is gone (cancelled): nobody would stop it.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(started.result(), signal.SIGKILL)
            raise
        return RemoteChild(pid, exited)

    async def _send(self, sock: socket.socket, frame: bytes, fd: int) -> None:
        """Send ``frame`` with ``fd`` attached to its first byte.

        Once begun, a frame is sent whole even if cancelled meanwhile (the cancellation is
        re-raised after): half a frame would garble every request after it. The helper
        reads all the time, so this ends soon.
        """
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))]
        loop = asyncio.get_running_loop()
        view, cancelled, first = memoryview(frame), False, True
        try:
            while view:
                try:
                    sent = sock.sendmsg([view], rights) if first else sock.send(view)
                except BlockingIOError:  # a large request fills the socket's buffer
                    try:
                        await wait_writable(loop, sock)
                    except asyncio.CancelledError:
                        if first:
                            raise  # nothing sent yet: nothing to finish
                        cancelled = True
                    continue
                view, first = view[sent:], False
        except OSError as exc:
            raise OSError(errno.EPIPE, f"the spawner helper is gone: {exc}") from None
        if cancelled:
            raise asyncio.CancelledError

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sock is not None:  # left from another event loop (tests): end it
            self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _HELPER, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env={},  # nothing of the daemon's environment, even in the helper
                cwd="/",
                pass_fds=[theirs.fileno()],
                start_new_session=True,  # a terminal's ^C to the agent is not for it
            )
        except (OSError, subprocess.SubprocessError) as exc:
            ours.close()
            _log.warning("exec.spawner_unavailable", error=str(exc))
            raise SpawnerUnavailable(str(exc)) from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        self._loop, self._proc, self._sock = loop, proc, ours
        self._buffer.clear()
        self._send_lock = asyncio.Lock()
        loop.add_reader(ours, self._readable)
        try:
            self._pidfd = os.pidfd_open(proc.pid)
        except OSError:
            self._pidfd = -1  # its death still shows as end of file on the socket
        else:
            loop.add_reader(self._pidfd, self._helper_exited)
        _log.info("exec.spawner_started", pid=proc.pid, restarted=self._lost)

    def _readable(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            data = sock.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lose("end of file from the helper")
            return
        self._buffer += data
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            if len(self._buffer) < _HEADER.size + size:
                break
            reply = json.loads(self._buffer[_HEADER.size : _HEADER.size + size])
            del self._buffer[: _HEADER.size + size]
            self._dispatch(reply)
        if len(self._buffer) > _MAX_PENDING_BYTES:
            self._lose("the helper sent a malformed reply")

    def _dispatch(self, reply: dict[str, Any]) -> None:
        rid = int(reply["id"])
        if "pid" in reply:
            started, pid = self._starts.pop(rid, None), int(reply["pid"])
            if started is not None and not started.done():
                self._exits[rid] = (pid, self._exits[rid][1])
                started.set_result(pid)
            else:
                # The caller gave up before the pid came: nobody owns the process.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        elif "status" in reply:
            entry = self._exits.pop(rid, None)
            if entry is not None and not entry[1].done():
                entry[1].set_result(int(reply["status"]))
        else:
            started = self._starts.pop(rid, None)
            self._exits.pop(rid, None)
            if started is not None and not started.done():
                started.set_exception(
                    OSError(reply.get("errno") or 0, reply["strerror"], reply.get("filename"))
                )

    def _helper_exited(self) -> None:
        self._lose("the helper exited")

    def _lose(self, why: str) -> None:
        """The helper is gone: fail pending starts, kill what it started, reap it."""
        starts, exits = self._starts, self._exits
        self._starts, self._exits = {}, {}
        killed = 0
        for pid, exited in exits.values():
            if pid and not exited.done():
                # Its exit status cannot be known any more: stop it rather than leave
                # it running unsupervised.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                exited.set_result(-signal.SIGKILL)
                killed += 1
        for started in starts.values():
            if not started.done():
                started.set_exception(
                    OSError(errno.EPIPE, "the spawner helper exited before confirming the start")
                )
        if self._sock is not None or starts or exits:
            _log.warning("exec.spawner_lost", reason=why, killed=killed, unconfirmed=len(starts))
        self._lost = True
        self.close()

    def close(self) -> None:
        """End the helper (end of file on its socket) and reap it.

        Commands it started run on unsupervised: call this once none is running.
        """
        loop, sock, proc, pidfd = self._loop, self._sock, self._proc, self._pidfd
        self._sock, self._proc, self._pidfd = None, None, -1
        if sock is not None:
            with contextlib.suppress(Exception):
                if loop is not None and not loop.is_closed():
                    loop.remove_reader(sock)
            sock.close()
        if pidfd >= 0:
            with contextlib.suppress(Exception):
                if loop is not None and not loop.is_closed():
                    loop.remove_reader(pidfd)
            os.close(pidfd)
        if proc is not None:
            try:
                proc.wait(timeout=5)  # it exits at end of file, at once
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
