"""The spawner helper: starts commands as their users from a small address space.

The agent runs this file as ``python -I -S spawner_main.py`` (standard library only, no
site-packages, an empty environment) with one end of a ``socketpair`` as the file descriptor
named by its argument: nothing else can reach it, there is no socket on the filesystem. It
forks once per command. Forking the agent itself to change uid would copy the page tables
of its whole address space (CPython disables vfork when ``user=`` is given), and starting
``setpriv`` costs a second exec; forking this small process costs neither.

Requests and replies are frames: a 4-byte big-endian length, then a JSON object.

* request ``{"id", "argv", "env", "cwd", "uid", "gid", "groups"}``, with the write end
  of the command's output pipe attached (``SCM_RIGHTS``);
* reply ``{"id", "pid"}`` once the command has exec'd, or ``{"id", "errno",
  "strerror", "filename"}`` if it could not start;
* later ``{"id", "status"}`` when this helper has reaped it (negative: killed by that
  signal, as ``Popen.returncode``).

The child, through ``subprocess.Popen``: a new session (so a process group of its own),
``setgroups`` (exactly ``groups``), ``setregid(gid, gid)`` and ``setreuid(uid, uid)``
(real, effective and saved ids all the target's, as ``setpriv --reuid --regid`` sets
them; leaving uid 0 clears the permitted, effective and ambient capabilities), stdin
``/dev/null``, stdout and stderr the pipe, every other descriptor closed, exactly the
environment the agent built, ``cwd``, and the umask and resource limits the agent had
when it started this helper. On end of file from the agent the helper exits; commands
still running go on, as they would after the agent's own death.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
from typing import Any


__all__ = ["HEADER", "MAX_FRAME", "main"]

HEADER = struct.Struct("!I")
MAX_FRAME = 16 * 1024 * 1024
"""Bytes of one request at most (a command's line and environment are far smaller)."""


_Request = tuple[dict[str, Any], list[int]]


def _recv_exact(sock: socket.socket, size: int, fds: list[int]) -> bytes | None:
    """``size`` bytes (None at end of file), collecting descriptors sent with them."""
    chunks, got = [], 0
    room = socket.CMSG_SPACE(4 * array.array("i").itemsize)
    while got < size:
        data, ancdata, _flags, _addr = sock.recvmsg(size - got, room)
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
                fds.extend(received)
        if not data:
            return None
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


class _Server:
    """The helper's state: its socket and the children it started, not yet reaped."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.children: dict[int, int] = {}  # pid -> request id

    def send(self, reply: dict[str, Any]) -> None:
        body = json.dumps(reply).encode()
        self.sock.sendall(HEADER.pack(len(body)) + body)

    def start(self, request: dict[str, Any], fds: list[int]) -> None:
        """Start the command of one request and say how it went."""
        rid = int(request["id"])
        try:
            if len(fds) != 1:
                raise ValueError(f"expected one output descriptor, got {len(fds)}")
            popen = _start(request, fds[0], self.devnull)
        except OSError as exc:
            filename = exc.filename if isinstance(exc.filename, str) else None
            self.send(
                {"id": rid, "errno": exc.errno, "strerror": exc.strerror, "filename": filename}
            )
            return
        except (ValueError, TypeError, KeyError, subprocess.SubprocessError) as exc:
            self.send({"id": rid, "errno": None, "strerror": str(exc), "filename": None})
            return
        finally:
            for fd in fds:  # the child has its copy; ours would keep the pipe open
                os.close(fd)
        # reap() waits for it (waitpid(-1)); a returncode keeps Popen's __del__ from
        # listing it for a wait of its own.
        popen.returncode = 0
        self.children[popen.pid] = rid
        self.send({"id": rid, "pid": popen.pid})

    def reap(self) -> None:
        """Collect every exited child and report its status."""
        while self.children:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            rid = self.children.pop(pid, None)
            if rid is not None:
                self.send({"id": rid, "status": os.waitstatus_to_exitcode(wait_status)})


def _start(request: dict[str, Any], out_fd: int, devnull: int) -> subprocess.Popen[bytes]:
    groups = [int(g) for g in request["groups"]]
    if not groups:  # Popen would then keep this helper's (root's) groups
        raise ValueError("no supplementary groups given")
    return subprocess.Popen(
        [str(a) for a in request["argv"]],
        stdin=devnull,
        stdout=out_fd,
        stderr=out_fd,
        env={str(k): str(v) for k, v in request["env"].items()},
        cwd=str(request["cwd"]),
        start_new_session=True,
        close_fds=True,
        user=int(request["uid"]),
        group=int(request["gid"]),
        extra_groups=groups,
    )


def _read_request(sock: socket.socket) -> _Request | None:
    """The next request, or None at end of file (or broken framing)."""
    fds: list[int] = []
    header = _recv_exact(sock, HEADER.size, fds)
    frame = None
    if header is not None:
        (size,) = HEADER.unpack(header)
        frame = _recv_exact(sock, size, fds) if size <= MAX_FRAME else None
    if frame is None:
        for fd in fds:
            os.close(fd)
        return None
    return json.loads(frame), fds


def main(socket_fd: int) -> None:
    """Serve the agent's requests on ``socket_fd`` until it closes its end."""
    sock = socket.socket(fileno=socket_fd)
    sock.setblocking(True)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    # Python-level handlers: reset to the default by exec, unlike SIG_IGN, so commands
    # still die of SIGTERM. SIGTERM/SIGINT are for the agent to act on, not this helper.
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    server = _Server(sock)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is sock:
                request = _read_request(sock)
                if request is None:
                    return  # the agent is gone: commands still running go on
                server.start(*request)
            else:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
        server.reap()


if __name__ == "__main__":
    main(int(sys.argv[1]))
