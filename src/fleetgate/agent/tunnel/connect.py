"""A non-blocking connect that finishes without the event loop when the kernel has already.

A tunnel's target is this server's loopback, where the kernel completes the TCP handshake
inside ``connect(2)`` itself: the call still says ``EINPROGRESS``, yet the socket is
writable at once. ``asyncio``'s ``sock_connect`` would register the socket with the
selector, wait a loop turn (behind whatever else is ready, such as the previous stream's
teardown) and unregister it: two ``epoll_ctl`` calls and a turn on every stream's set-up.
A zero-timeout ``poll(2)`` tells the same thing at once.
"""

from __future__ import annotations

import errno
import os
import select
import socket


__all__ = ["connected_at_once"]


def connected_at_once(sock: socket.socket, address: tuple[str, int]) -> bool:
    """Start connecting non-blocking ``sock`` to ``address``; True when it is connected
    already, False when the handshake is still under way (finish it with the loop's
    ``sock_connect``, which picks the attempt up).

    Raises:
        OSError: the connection failed at once (refused, unreachable).
    """
    err = sock.connect_ex(address)
    if err == 0:
        return True
    if err != errno.EINPROGRESS:
        raise OSError(err, os.strerror(err))
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    if not poller.poll(0):
        return False
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))
    return True
