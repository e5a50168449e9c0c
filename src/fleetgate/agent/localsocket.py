"""The agent's local Unix sockets (status, sudo decisions): root only, never on the network."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path


__all__ = ["bind_private_datagram_socket", "bind_private_socket", "serve_clients"]


def bind_private_socket(path: Path, backlog: int) -> socket.socket:
    """A non-blocking listening Unix stream socket at ``path``, mode 0600 from the start.

    The parent directory is created 0700 when missing; an existing one is left as it is
    (it may be shared, like /run): the socket's own mode is what keeps others out. The
    caller removes a stale socket first.

    Raises:
        OSError: the directory or the socket cannot be made.
    """
    sock = _bound(path, socket.SOCK_STREAM)
    try:
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_private_datagram_socket(path: Path) -> socket.socket:
    """A non-blocking Unix datagram socket at ``path``, mode 0600 from the start, that
    receives each datagram with its sender's credentials (``SO_PASSCRED``: the kernel's
    pid, real uid and gid of the sender, whatever it sends).

    Raises:
        OSError: the directory or the socket cannot be made.
    """
    sock = _bound(path, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _bound(path: Path, kind: int) -> socket.socket:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        # Connecting or sending needs write permission, so the mode must be right at
        # bind(); the daemon binds before it starts any thread, so flipping the process
        # umask is safe.
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_clients(
    sock: socket.socket,
    answer: Callable[[socket.socket], Coroutine[None, None, None]],
    *,
    clients: asyncio.Semaphore,
    name: str,
) -> None:
    """Accept on ``sock`` until cancelled, each client answered in a task of an inner group.

    ``answer`` holds ``clients`` while it works; a client arriving when all are taken is
    closed at once (refused, never queued behind slow ones).
    """
    loop = asyncio.get_running_loop()
    async with asyncio.TaskGroup() as tg:
        while True:
            conn, _ = await loop.sock_accept(sock)
            if clients.locked():
                conn.close()
                continue
            tg.create_task(answer(conn), name=name)
