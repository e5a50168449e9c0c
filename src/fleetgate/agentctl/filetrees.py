"""Directories over a ``files`` channel: a tar stream made or read on the fly.

``tarfile`` is blocking, so it runs in a thread that exchanges chunks with the event loop
through a small bounded queue (at most four chunks in flight): no archive is ever written
to disk, memory stays bounded. A downloaded tree is extracted into a hidden directory
beside the target, with the same member checks as the agent's worker (no escapes, no
device nodes, nothing written through a symlink), and renamed into place once the
stream's SHA-256 matched. Trees do not resume: a dropped connection fails the transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import IO, Any, cast

import janus
from websockets.exceptions import ConnectionClosed

from fleetgate.agentctl.context import Context
from fleetgate.agentctl.errors import CliError
from fleetgate.agentctl.filetransfer import (
    CHUNK_BYTES,
    Dropped,
    Options,
    Report,
    TransferFailed,
    open_once,
    recv_control,
)
from fleetgate.agentctl.transfers import local_part_name, transfer_id
from fleetgate.shared.errors import TransferError
from fleetgate.shared.files.members import CheckedMembers
from fleetgate.shared.files.transfer import Request
from fleetgate.shared.jsontext import loads as json_loads


__all__ = ["download_tree", "upload_tree"]

_END = object()


class _Pipe:
    """A bounded hand-over of chunks between a tar thread and the event loop (janus).

    Either side ends it with :meth:`stop`: the thread then stops at its next ``put`` or
    ``get``, and the loop's awaits return at once, so neither waits for the other.
    """

    def __init__(self) -> None:
        self.q: janus.Queue[object] = janus.Queue(maxsize=4)

    def put(self, item: object) -> None:
        """Thread side; raises :class:`CliError` once the transfer was abandoned."""
        try:
            self.q.sync_q.put(item)
        except janus.SyncQueueShutDown:
            raise CliError("the transfer was abandoned") from None

    def get(self) -> object:
        """Thread side; ``_END`` once the transfer was abandoned."""
        try:
            return self.q.sync_q.get()
        except janus.SyncQueueShutDown:
            return _END

    async def aput(self, item: object) -> None:
        """Loop side of :meth:`put`."""
        try:
            await self.q.async_q.put(item)
        except janus.AsyncQueueShutDown:
            raise CliError("the transfer was abandoned") from None

    async def aget(self) -> object:
        """Loop side of :meth:`get`."""
        try:
            return await self.q.async_q.get()
        except janus.AsyncQueueShutDown:
            return _END

    def stop(self) -> None:
        """End the hand-over (either side, any thread)."""
        self.q.shutdown(immediate=True)

    async def aclose(self) -> None:
        """Loop side: end the hand-over and let the queue's pending wake-ups run."""
        self.stop()
        await self.q.wait_closed()


class _ChunkWriter:
    def __init__(self, pipe: _Pipe) -> None:
        self.pipe, self.buf = pipe, bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        if len(self.buf) >= CHUNK_BYTES:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buf:
            self.pipe.put(bytes(self.buf))
            self.buf = bytearray()


class _ChunkReader:
    def __init__(self, pipe: _Pipe) -> None:
        self.pipe, self.pending, self.ended = pipe, b"", False

    def read(self, size: int = -1) -> bytes:
        while not self.pending and not self.ended:
            item = self.pipe.get()
            if item is _END:
                self.ended = True
            else:
                self.pending = cast(bytes, item)
        count = len(self.pending) if size < 0 else size
        out, self.pending = self.pending[:count], self.pending[count:]
        return out


def _skip_special(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if info.ischr() or info.isblk() or info.isfifo() else info


def _produce(source: Path, pipe: _Pipe) -> None:
    """Thread: the tar stream of ``source`` into ``pipe`` (an exception ends it too)."""
    try:
        writer = _ChunkWriter(pipe)
        with tarfile.open(
            fileobj=cast(IO[bytes], writer), mode="w|", format=tarfile.PAX_FORMAT,
            bufsize=CHUNK_BYTES,
        ) as tar:  # fmt: skip
            tar.add(str(source), arcname=".", recursive=True, filter=_skip_special)
        writer.flush()
        pipe.put(_END)
    except Exception as exc:  # noqa: BLE001 (handed over to the event loop, raised there)
        with contextlib.suppress(CliError):
            pipe.put(exc)


async def upload_tree(
    ctx: Context, opts: Options, source: Path, remote: str, *, name: str, report: Report
) -> dict[str, Any]:
    """Upload directory ``source`` as ``remote`` (an existing directory receives ``name``)."""
    tid = os.urandom(16).hex()
    ws = await open_once(
        ctx, opts, op="upload", path=remote, name=name, transfer_id=tid, recursive=True,
        overwrite=opts.overwrite,
    )  # fmt: skip
    pipe = _Pipe()
    producer = asyncio.get_running_loop().run_in_executor(None, _produce, source, pipe)
    try:
        await recv_control(ws)
        hasher, sent = hashlib.sha256(), 0
        while (item := await pipe.aget()) is not _END:
            if isinstance(item, BaseException):
                raise CliError(f"cannot read {source}: {item}")
            chunk = cast(bytes, item)
            hasher.update(chunk)
            await ws.send(chunk)
            sent += len(chunk)
            report(sent)
        await ws.send(json.dumps({"type": "end", "size": sent, "sha256": hasher.hexdigest()}))
        done = await recv_control(ws)
        if done.get("sha256") != hasher.hexdigest():
            raise CliError("SHA-256 mismatch on the directory stream")
        done["resumed_from"] = 0
        return done
    except ConnectionClosed as exc:
        raise CliError(f"the connection dropped during the directory upload: {exc}") from None
    except Dropped as exc:
        raise CliError(f"the connection dropped during the directory upload: {exc}") from None
    finally:
        await pipe.aclose()
        await producer
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 5)


def _consume(pipe: _Pipe, temp: Path, errors: list[Exception]) -> None:
    """Thread: extract the stream from ``pipe`` into ``temp`` with the worker's checks."""
    try:
        reader = _ChunkReader(pipe)
        with tarfile.open(fileobj=cast(IO[bytes], reader), mode="r|", bufsize=CHUNK_BYTES) as tar:
            if hasattr(tarfile, "tar_filter"):
                tar.extraction_filter = tarfile.tar_filter
            members = CheckedMembers(tar, str(temp), Request(op="download", path="/"))
            tar.extractall(temp, members=members)  # noqa: S202 (checked members)
        while reader.read(CHUNK_BYTES):
            pass
    except Exception as exc:  # noqa: BLE001 (handed over to the event loop, raised there)
        errors.append(exc)
        pipe.stop()


async def download_tree(
    ctx: Context, opts: Options, remote: str, target: Path, *, report: Report
) -> dict[str, Any]:
    """Download directory ``remote`` as ``target`` (extracted beside it, then renamed)."""
    if os.path.lexists(target) and not opts.overwrite:  # noqa: ASYNC240 (local, microseconds)
        raise CliError(f"{target} exists (use --overwrite)")
    temp = target.parent / local_part_name(target.name, transfer_id(remote, os.urandom(8)))
    temp.mkdir(mode=0o700)
    ws = await open_once(ctx, opts, op="download", path=remote, recursive=True)
    pipe, errors = _Pipe(), list[Exception]()
    consumer = asyncio.get_running_loop().run_in_executor(None, _consume, pipe, temp, errors)
    try:
        await recv_control(ws)
        hasher, received = hashlib.sha256(), 0
        while True:
            frame = await ws.recv()
            if isinstance(frame, str):
                break
            hasher.update(frame)
            received += len(frame)
            await pipe.aput(frame)
            report(received)
        done: dict[str, Any] = json_loads(frame)
        if done.get("type") == "error":
            raise TransferFailed(str(done.get("code")), str(done.get("message")))
        await pipe.aput(_END)
        await consumer
        if errors:
            error = errors[0]
            if isinstance(error, TransferError):
                raise TransferFailed(error.code, error.message)
            raise CliError(f"cannot extract the directory: {error}")
        if done.get("sha256") != hasher.hexdigest():
            raise CliError("SHA-256 mismatch on the directory stream")
        _swap_in(temp, target)
        done["resumed_from"] = 0
        return done
    except ConnectionClosed as exc:
        raise CliError(f"the connection dropped during the directory download: {exc}") from None
    finally:
        await pipe.aclose()
        await consumer
        shutil.rmtree(temp, ignore_errors=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 5)


def _swap_in(temp: Path, target: Path) -> None:
    """Rename the extracted tree into place (an existing target is replaced whole)."""
    if target.is_symlink() or target.exists():
        old = target.parent / local_part_name(target.name, os.urandom(16).hex())
        os.rename(target, old)
        os.rename(temp, target)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        os.rename(temp, target)
