"""Waiting on the event loop until a non-blocking descriptor can take more bytes (a
write that found the kernel's buffer full), without a thread or a busy loop."""

from __future__ import annotations

import asyncio
import socket


__all__ = ["wait_writable"]


async def wait_writable(loop: asyncio.AbstractEventLoop, target: int | socket.socket) -> None:
    """Wait until ``target`` (a descriptor or a socket) has room to write."""
    ready: asyncio.Future[None] = loop.create_future()

    def room() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(target, room)
    try:
        await ready
    finally:
        loop.remove_writer(target)
