"""A terminal's PTY master, as far as it needs none of the terminal's state: writing
input without blocking the event loop, the per-thread read buffer, and which input a
recording may keep (:func:`redact_if_secret`)."""

from __future__ import annotations

import asyncio
import errno
import os
import termios
import threading

from fleetgate.shared.writable import wait_writable


__all__ = ["READ_BUDGET", "read_buffer", "redact_if_secret", "write_all"]

READ_BUDGET = 256 * 1024
"""Bytes read from the PTY per event-loop wake-up at most (fairness between terminals)."""


async def write_all(loop: asyncio.AbstractEventLoop, fd: int, data: bytes) -> None:
    """Write all of ``data`` to the PTY master ``fd`` (non-blocking), waiting while the
    kernel's buffer is full; a hung-up PTY (EIO: the shell is gone) takes nothing more,
    as the shell's exit ends the terminal."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            await wait_writable(loop, fd)
            continue
        except OSError as exc:
            if exc.errno == errno.EIO:  # the shell is gone; its exit ends the terminal
                return
            raise
        view = view[written:]


_local = threading.local()


def read_buffer() -> bytearray:
    """This thread's read buffer, shared by its terminals (a read is never interrupted)."""
    buffer: bytearray | None = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = bytearray(READ_BUDGET)
    return buffer


def redact_if_secret(fd: int, data: bytes) -> bytes:
    """``data`` as recorded: typed while the terminal does not echo in line mode (a
    password prompt: sudo, passwd, ssh), every byte but line ends becomes ``*``.

    On Linux the master reports the slave's modes, so this sees what the prompt set.
    Full-screen programs turn echo off too, but in raw mode; their input is kept.
    """
    try:
        lflag = termios.tcgetattr(fd)[3]
    except termios.error:
        return data
    if lflag & termios.ECHO or not lflag & termios.ICANON:
        return data
    return bytes(b if b in b"\r\n" else 0x2A for b in data)
