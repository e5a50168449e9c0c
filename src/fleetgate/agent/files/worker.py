"""The file worker: one process per transfer, running as the session user.

The agent starts ``python -I -m fleetgate.agent.files.worker`` with exactly the user's uid, gid and
groups and a clean environment, then relays the channel to its stdin and stdout (framed,
see :mod:`fleetgate.shared.files.framing`). The first frame on stdin is the request (a JSON object,
:func:`fleetgate.shared.files.transfer.parse_request`); after that the frames are the transfer's own
(``docs/protocol.md``, "File transfer"). Every read and write is the user's, so the kernel
decides what the user may touch; the worker adds the path rules on top.

Exit status: 0 done, 1 refused or failed (an ``error`` frame was sent), 2 the agent went
away (stdin closed; an upload keeps its temporary file for a resumed attempt).

It imports nothing heavy (no pydantic, no asyncio): it starts in tens of milliseconds, and
a single file's transfer (most of them) waits for that start, so what only directories
need (``tarfile`` and its compression modules, ``ctypes``) is imported for them alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys

from fleetgate.agent.files.pipeio import EndOfInput, PipeIO
from fleetgate.agent.files.single import download_file, upload_file
from fleetgate.agent.files.walk import Walker, os_error
from fleetgate.shared.errors import TransferError
from fleetgate.shared.files.transfer import Request, parse_request


__all__ = ["main"]

EXIT_DONE, EXIT_FAILED, EXIT_GONE = 0, 1, 2
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _serve(pipe: PipeIO, walker: Walker, request: Request) -> None:
    """Run the transfer ``request`` asks for."""
    if not request.recursive:
        (upload_file if request.op == "upload" else download_file)(pipe, walker, request)
        return
    from fleetgate.agent.files.trees import download_tree, upload_tree

    (upload_tree if request.op == "upload" else download_tree)(pipe, walker, request)


def main() -> int:
    """Serve one transfer on stdin/stdout; return the exit status."""
    os.umask(0o022)
    os.chdir("/")
    for fd in (0, 1):
        # One chunk crosses the pipe in one go (1 MiB is what any user may ask for).
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
    pipe = PipeIO()
    try:
        try:
            request = parse_request(pipe.read_text())
            walker = Walker(os.geteuid(), request.allowed_roots)
            _serve(pipe, walker, request)
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            raise os_error(exc, exc.filename or "the file") from None
    except TransferError as exc:
        try:
            pipe.error(exc)
        except BrokenPipeError:
            return EXIT_GONE
        return EXIT_FAILED
    except (EndOfInput, BrokenPipeError):
        return EXIT_GONE
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
