"""Run a blocking ``socketserver`` server in a thread for the length of a ``with`` block."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager


__all__ = ["serving"]


@contextmanager
def serving(server: socketserver.BaseServer, join_timeout: float = 10.0) -> Iterator[int]:
    """Serve ``server`` in a daemon thread; yield its port; shut it down and close it after."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])  # type: ignore[index]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(join_timeout)
