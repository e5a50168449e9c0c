"""Test support for file transfers: driving the file worker directly over its pipes.

:class:`Worker` starts ``python -m fleetgate.agent.files.worker`` (as a given user through setpriv,
exactly as the agent does) and speaks its framing, so the worker's rules can be tested
without the whole stack. :func:`write_random` makes big test files quickly.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from fleetgate.agent.exec.identity import build_environment, resolve_identity
from fleetgate.agent.exec.spawn import find_setpriv, privilege_argv
from fleetgate.shared.files.framing import (
    DATA,
    HEADER,
    TEXT,
    decode_header,
    encode_header,
    encode_text,
)
from fleetgate.shared.files.transfer import Request


__all__ = ["Worker", "sha256_file", "tar_bytes", "upload_bytes", "write_random"]

WORKER_ARGV = [sys.executable, "-I", "-m", "fleetgate.agent.files.worker"]


class Worker:
    """One worker process; ``request`` is its first frame (the worker's request JSON).

    With ``socket_out`` its stdout is a Unix socket, as the agent gives it (descriptors
    the worker hands over are collected in :attr:`fds`).
    """

    def __init__(
        self, request: dict[str, Any], user: str | None = None, *, socket_out: bool = False
    ) -> None:
        argv = list(WORKER_ARGV)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        if user is not None:
            identity = resolve_identity(user, None)
            setpriv = find_setpriv()
            assert setpriv is not None
            argv = privilege_argv(setpriv, identity, argv)
            env = build_environment(identity, {})
        self.sock: socket.socket | None = None
        self.fds: list[int] = []
        theirs: socket.socket | None = None
        if socket_out:
            self.sock, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=theirs.fileno() if theirs is not None else subprocess.PIPE,
            env=env,
            cwd="/",
        )
        if theirs is not None:
            theirs.close()
        self.send(request)

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(encode_text(obj))
        self.proc.stdin.flush()

    def send_data(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(encode_header(DATA, len(data)) + data)

    def _read_exact(self, size: int) -> bytes:
        """``size`` bytes of the worker's output (fewer at EOF)."""
        if self.sock is None:
            assert self.proc.stdout is not None
            return self.proc.stdout.read(size)
        out = b""
        while len(out) < size:
            data, fds, _, _ = socket.recv_fds(self.sock, size - len(out), 4)
            self.fds.extend(fds)
            if not data:
                break
            out += data
        return out

    def read(self) -> tuple[bytes, bytes]:
        """The next frame ``(kind, payload)``; ``(b"", b"")`` at EOF."""
        header = self._read_exact(HEADER.size)
        if not header:
            return b"", b""
        kind, length = decode_header(header)
        return kind, self._read_exact(length)

    def read_text(self) -> dict[str, Any]:
        import json

        kind, payload = self.read()
        assert kind == TEXT, (kind, payload[:100])
        result: dict[str, Any] = json.loads(payload)
        return result

    def close_input(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        rc = self.proc.wait(30)
        if self.sock is not None:
            self.sock.close()
        else:
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        return rc

    def download(self) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
        """Read ``ready``, the data, and the final frame of a download."""
        ready = self.read_text()
        if ready["type"] != "ready":
            return ready, b"", ready
        out = io.BytesIO()
        while True:
            kind, payload = self.read()
            if kind == DATA:
                out.write(payload)
                continue
            import json

            return ready, out.getvalue(), json.loads(payload)


def request(op: str, path: str, **fields: Any) -> dict[str, Any]:
    """A worker request with the defaults of :class:`Request`."""
    defaults = Request(op="upload", path="/")
    obj: dict[str, Any] = {
        "type": "request",
        "op": op,
        "path": path,
        "transfer_id": fields.pop("transfer_id", os.urandom(16).hex()),
        "max_file_bytes": defaults.max_file_bytes,
        "chunk_bytes": 256 * 1024,
    }
    obj.update(fields)
    return obj


def upload_bytes(
    data: bytes, path: str, user: str | None = None, **fields: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Upload ``data`` in one go; return ``(ready, final)`` frames."""
    fields.setdefault("size", len(data))
    worker = Worker(request("upload", path, **fields), user)
    ready = worker.read_text()
    if ready["type"] != "ready":
        worker.wait()
        return ready, ready
    offset = ready["offset"]
    for start in range(offset, len(data), 256 * 1024):
        worker.send_data(data[start : start + 256 * 1024])
    worker.send({"type": "end", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    final = worker.read_text()
    worker.wait()
    return ready, final


def tar_bytes(entries: dict[str, bytes | str | None]) -> bytes:
    """A tar archive: bytes = file, str = symlink target, None = directory."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, value in entries.items():
            info = tarfile.TarInfo(name)
            if value is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(value, str):
                info.type, info.linkname = tarfile.SYMTYPE, value
                tar.addfile(info)
            else:
                info.size, info.mode = len(value), 0o644
                tar.addfile(info, io.BytesIO(value))
    return out.getvalue()


def write_random(path: Path, size: int, chunk: int = 8 << 20) -> str:
    """Write ``size`` random bytes to ``path``; return their SHA-256."""
    hasher = hashlib.sha256()
    block = os.urandom(chunk)
    with open(path, "wb") as out:
        written = 0
        while written < size:
            # Vary each block cheaply so the file is not one repeated pattern.
            piece = written.to_bytes(8, "big") + block[8 : min(chunk, size - written)]
            piece = piece[: size - written]
            out.write(piece)
            hasher.update(piece)
            written += len(piece)
    return hasher.hexdigest()


def sha256_file(path: Path) -> str:
    """The SHA-256 of a local file."""
    hasher = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()
