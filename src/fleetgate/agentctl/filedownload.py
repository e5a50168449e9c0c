"""Downloading one regular file over a ``files`` channel (asyncio, a writer thread).

The frames go to a hidden part file beside the target (through ``DownloadSink`` where it
can take the connection over, else through websockets and ``DiskWriter``); the SHA-256
of ``done`` is checked, the part file made durable and renamed into place. A resumed
download starts from the part file's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import janus
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from fleetgate.agentctl.context import Context
from fleetgate.agentctl.downsink import DownloadSink
from fleetgate.agentctl.errors import CliError
from fleetgate.agentctl.filetransfer import (
    RETRIES,
    Closing,
    Dropped,
    Options,
    Report,
    TransferFailed,
    closed_error,
    control_json,
    hash_prefix,
    open_channel,
    recv_control,
    with_retries,
)
from fleetgate.agentctl.transfers import local_part_name, transfer_id
from fleetgate.shared.files.direct import DirectWriter
from fleetgate.shared.heap import keep_large_buffers


__all__ = ["DiskWriter", "download_file"]


async def download_file(
    ctx: Context,
    opts: Options,
    remote: str,
    target: Path,
    *,
    report: Report,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    retries: int = RETRIES,
) -> dict[str, Any]:
    """Download one regular file to ``target`` (atomically); return ``done``."""
    keep_large_buffers()  # received frames from the heap, not one mmap each
    real = os.path.realpath(target)  # noqa: ASYNC240 (a local lookup, microseconds)
    tid = transfer_id("download", opts.server, opts.user, remote, real)
    part = target.parent / local_part_name(target.name, tid)
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    first_offset: list[int] = []
    try:

        async def attempt() -> dict[str, Any]:
            offset = os.fstat(fd).st_size
            hasher = hashlib.sha256()
            await asyncio.to_thread(hash_prefix, fd, offset, hasher)
            ws = await open_channel(ctx, opts, op="download", path=remote, offset=offset)

            def readied(ready: dict[str, Any]) -> None:
                first_offset.append(offset)
                if on_ready is not None:
                    on_ready(ready)

            async with contextlib.aclosing(Closing(ws)):
                # Taken over before ``ready``: the agent's data follows it at once.
                sink = DownloadSink.attach(ws, fd, offset, hasher, report)
                try:
                    ready, frame, position = await _receive_download(
                        ws, sink, fd, offset, hasher, report, readied
                    )
                except TransferFailed as exc:
                    if exc.agent_code == "invalid" and offset:
                        if sink is not None:
                            await sink.aclose()  # it writes nothing more after this
                        os.ftruncate(fd, 0)  # the remote file shrank: start over
                        raise Dropped("the remote file changed; starting again") from None
                    raise
                finally:
                    if sink is not None:
                        await sink.aclose()
                done = control_json(frame)
                if not isinstance(done, dict):
                    raise CliError("the agent sent a malformed control frame")
                if done.get("type") == "error":
                    raise TransferFailed(str(done.get("code")), str(done.get("message")))
                if done.get("sha256") != hasher.hexdigest() or done.get("size") != position:
                    os.ftruncate(fd, 0)
                    raise CliError("SHA-256 mismatch: the download was corrupted; run it again")
                mode = int(ready.get("mode") or 0o644) & 0o777
                os.fsync(fd)
                os.fchmod(fd, mode & ~_umask())
                return done

        done: dict[str, Any] = await with_retries(ctx, attempt, retries)
    except BaseException:
        _discard_if_empty(fd, part)
        raise
    os.close(fd)
    _put_in_place(part, target, overwrite=opts.overwrite)
    done["resumed_from"] = first_offset[0] if first_offset else 0
    return done


async def _receive_download(
    ws: ClientConnection,
    sink: DownloadSink | None,
    fd: int,
    offset: int,
    hasher: Any,
    report: Report,
    on_ready: Callable[[dict[str, Any]], None],
) -> tuple[dict[str, Any], str, int]:
    """The agent's ``ready``, its last frame and the bytes received (into ``sink`` where
    it took the connection over, else through websockets)."""
    ready = await recv_control(ws)
    on_ready(ready)
    report(offset)
    if sink is not None:
        frame, position = await _receive_into(ws, sink)
    else:
        frame, position = await _receive(ws, fd, offset, hasher, report)
    return ready, frame, position


async def _receive_into(ws: ClientConnection, sink: DownloadSink) -> tuple[str, int]:
    """The data frames go to ``sink``; the agent's last frame, and the bytes received."""
    try:
        try:
            frame = await ws.recv()
        except ConnectionClosed as exc:
            raise closed_error(exc) from None
    finally:
        await sink.aclose()
    if isinstance(frame, bytes):  # only a malformed data frame reaches websockets
        raise CliError("the agent sent a malformed data frame")
    if sink.error is not None:
        raise CliError(f"cannot write the download: {sink.error}")
    return frame, sink.position


async def _receive(
    ws: ClientConnection, fd: int, offset: int, hasher: Any, report: Report
) -> tuple[str, int]:
    """The data frames through websockets (where the sink could not take the connection
    over); the agent's last frame, and the bytes received."""
    position = offset
    disk = DiskWriter(fd, hasher, offset)
    try:
        while True:
            try:
                frame = await ws.recv()
            except ConnectionClosed as exc:
                raise closed_error(exc) from None
            if isinstance(frame, str):
                break
            await disk.put(frame)
            position += len(frame)
            report(position)
    finally:
        await disk.aclose()
    return frame, position


def _discard_if_empty(fd: int, part: Path) -> None:
    """Close a failed download's part file; remove it when nothing was received (a
    refusal): only received bytes are worth keeping for a resume."""
    try:
        if os.fstat(fd).st_size == 0:
            part.unlink(missing_ok=True)
    except OSError:
        pass  # best effort: the original error is what the user must see
    finally:
        os.close(fd)


class DiskWriter:
    """Writes received chunks in a thread while a second one hashes them (both release the
    GIL), so the event loop keeps reading the socket while the disk is busy. The writes
    bypass the page cache where the file system allows (``DirectWriter``; elsewhere the
    file goes to disk and out of the page cache as it grows), so a large download does not
    push the user's working set out of memory and the final fsync has little left to wait
    for."""

    def __init__(self, fd: int, hasher: Any, offset: int) -> None:
        self.fd, self.hasher, self.offset = fd, hasher, offset
        self.q: janus.Queue[bytes | None] = janus.Queue(maxsize=8)
        self.error: OSError | None = None
        self.hashing = ThreadPoolExecutor(1, thread_name_prefix="agentctl-hash")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    async def put(self, chunk: bytes) -> None:
        """Queue ``chunk``, the next bytes of the file."""
        if self.error is not None:
            raise CliError(f"cannot write the download: {self.error}")
        await self.q.async_q.put(chunk)

    def _run(self) -> None:
        incoming = self.q.sync_q
        writer: DirectWriter | None = None
        try:
            writer = DirectWriter(self.fd, self.offset, drop=True)
            while (chunk := incoming.get()) is not None:
                if self.error is None:
                    hashed = self.hashing.submit(self.hasher.update, chunk)
                    try:
                        writer.write(chunk)
                    except OSError as exc:
                        self.error = exc
                    hashed.result()
            if self.error is None:
                writer.flush()
        except OSError as exc:
            self.error = exc
        except janus.SyncQueueShutDown:
            pass
        finally:
            if writer is not None:
                writer.close()
            self.hashing.shutdown(wait=True)

    async def aclose(self) -> None:
        """Wait until every chunk is written."""
        try:
            await self.q.async_q.put(None)
            await asyncio.to_thread(self.thread.join)
        finally:
            self.q.close()
            await self.q.wait_closed()
        if self.error is not None:
            raise CliError(f"cannot write the download: {self.error}")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _put_in_place(part: Path, target: Path, *, overwrite: bool) -> None:
    try:
        if overwrite:
            os.replace(part, target)
        else:
            os.link(part, target)
            os.unlink(part)
    except FileExistsError:
        raise CliError(
            f"{target} exists (use --overwrite); the download is kept in {part}"
        ) from None
    dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
