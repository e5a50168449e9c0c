"""SHA-256 of transfers, computed beside the I/O (runs in the worker).

The digest always covers the whole file: a resumed transfer first hashes the prefix it
skips (:func:`hash_prefix`); the chunks that move are hashed in a helper thread while
they are written (:class:`BackgroundHash`).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading

from fleetgate.shared.errors import TransferError


__all__ = ["BackgroundHash", "hash_prefix"]


def hash_prefix(fd: int, length: int, hasher: hashlib._Hash, buf: bytearray) -> None:
    """Feed the first ``length`` bytes of ``fd`` into ``hasher`` (resume of either side)."""
    view = memoryview(buf)
    done = 0
    while done < length:
        n = os.preadv(fd, [view[: min(len(buf), length - done)]], done)
        if n == 0:
            raise TransferError("changed", "the file shrank while it was read")
        hasher.update(view[:n])
        done += n


class BackgroundHash:
    """Hashes each chunk in a helper thread while the caller writes it out.

    ``hashlib`` and ``os.write`` both release the GIL, so with a free core hashing costs no
    wall time. :meth:`wait` must return before the chunk's buffer is reused.
    """

    def __init__(self, hasher: hashlib._Hash) -> None:
        self.hasher = hasher
        self._todo: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._pending = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (view := self._todo.get()) is not None:
            self.hasher.update(view)
            self._done.put(None)

    def start(self, view: memoryview) -> None:
        """Begin hashing ``view``."""
        self._todo.put(view)
        self._pending = True

    def wait(self) -> None:
        """Until the chunk given to :meth:`start` is hashed."""
        if self._pending:
            self._done.get()
            self._pending = False

    def close(self) -> None:
        """Stop the thread (after the last chunk)."""
        self.wait()
        self._todo.put(None)
        self._thread.join()
