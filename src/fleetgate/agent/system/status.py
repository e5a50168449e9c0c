"""The local status socket: ``fleetgate-agent status`` asks the running daemon how it is doing.

A Unix stream socket in the runtime directory (the directory is 0700 and the socket 0600,
both root's): nothing leaves the machine and only root can ask. A client connects and
reads one JSON object followed by a newline; the daemon then closes the connection. The
snapshot is built by a callable the daemon passes in, so this module knows nothing of the
backhaul or the dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from fleetgate.agent.errors import StateDirError, StatusUnavailable
from fleetgate.agent.localsocket import bind_private_socket, serve_clients
from fleetgate.shared.jsontext import loads as json_loads


__all__ = ["StatusServer", "query"]

log = structlog.get_logger(__name__)

MAX_CLIENTS = 8
"""Clients served at once; more are closed at once (bounded work for a local socket)."""
SEND_TIMEOUT = 2.0
MAX_REPLY_BYTES = 1024 * 1024


class StatusServer:
    """Serves snapshots on ``path`` until cancelled; removes the socket when it ends."""

    def __init__(self, path: Path, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self.path = path
        self._snapshot = snapshot
        self._sock: socket.socket | None = None
        self._clients = asyncio.Semaphore(MAX_CLIENTS)

    def bind(self) -> None:
        """Create the runtime directory (0700) and listen on the socket (0600).

        A stale socket from a crashed agent is replaced; one that answers belongs to a
        running agent, which is an error (two daemons on one identity would fight).

        Raises:
            StateDirError: the directory or the socket cannot be made, or another agent
                is serving it.
        """
        try:
            _remove_stale(self.path)
            sock = bind_private_socket(self.path, MAX_CLIENTS)
        except OSError as exc:
            raise StateDirError(
                f"status socket {self.path}: {exc.strerror or exc}"
                + (" (path too long)" if len(str(self.path)) > 100 else "")
            ) from exc
        self._sock = sock

    async def serve(self) -> None:
        """Accept clients until cancelled; each is answered in a task of an inner group."""
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        try:
            await serve_clients(
                self._sock, self._answer, clients=self._clients, name="status-client"
            )
        finally:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                self.path.unlink()

    async def _answer(self, conn: socket.socket) -> None:
        async with self._clients:
            try:
                conn.setblocking(False)
                data = (json.dumps(self._snapshot(), default=str) + "\n").encode()
                async with asyncio.timeout(SEND_TIMEOUT):
                    await asyncio.get_running_loop().sock_sendall(conn, data)
            except (OSError, TimeoutError) as exc:
                log.debug("status.client_failed", error=str(exc))
            finally:
                conn.close()


def _remove_stale(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: left over by an agent that died
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another agent is running and serving it")


def query(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """Read one snapshot from a running daemon (blocking; for the command line).

    Raises:
        StatusUnavailable: no daemon answers on ``path`` (not running, wrong runtime_dir,
            or not root).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    chunks: list[bytes] = []
    size = 0
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        while size <= MAX_REPLY_BYTES:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise StatusUnavailable(f"no agent answers on {path}: {exc.strerror or exc}") from exc
    finally:
        sock.close()
    try:
        reply = json_loads(b"".join(chunks))
    except ValueError as exc:
        raise StatusUnavailable(f"unreadable reply from {path}") from exc
    if not isinstance(reply, dict):
        raise StatusUnavailable(f"unexpected reply from {path}")
    return reply
