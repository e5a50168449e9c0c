"""The client side of one file transfer over a ``files`` channel (asyncio).

An upload reads the local file in chunks, sends them as binary frames from the offset
the agent reports in ``ready``, then ``end`` with the whole file's size and SHA-256; the
agent answers ``done`` once the file is durable and in place. A download writes the
frames to a hidden part file beside the target, checks the SHA-256 of ``done`` and
renames the part file into place. Either way a dropped connection is retried and the
transfer resumes from what is already through. Directories are in ``filetrees``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import janus
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from fleetgate.agentctl.channel import connect_channel
from fleetgate.agentctl.context import Context
from fleetgate.agentctl.downsink import DownloadSink
from fleetgate.agentctl.errors import CliError
from fleetgate.agentctl.transfers import local_part_name, transfer_id
from fleetgate.shared.backoff import backoff_delays
from fleetgate.shared.files.direct import CacheAwareReader, DirectWriter
from fleetgate.shared.heap import keep_large_buffers


__all__ = [
    "CHUNK_BYTES",
    "Dropped",
    "Options",
    "TransferFailed",
    "download_file",
    "open_channel",
    "open_once",
    "recv_control",
    "upload_file",
    "with_retries",
]

CHUNK_BYTES = 2 << 20
FILES_PATH = "/ws/files/"
RETRIES = 5
"""Resumptions of a transfer after a dropped connection (delays from shared.backoff)."""

Report = Callable[[int], None]
"""Called with the number of bytes of the file that are through so far."""


@dataclass
class Options:
    """What every transfer of one invocation shares."""

    server: str
    user: str | None = None
    group: str | None = None
    overwrite: bool = False
    work_session: str | None = None


class TransferFailed(CliError):
    """The agent refused or failed the transfer (its ``error`` frame)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=f"files_{code}")
        self.agent_code = code


class Dropped(Exception):
    """The connection ended before the transfer did: worth another attempt.

    ``unreachable`` carries the error when the control plane could not be reached at all:
    on the first attempt that is reported at once (nothing was ever connected to resume).
    """

    def __init__(self, message: str, unreachable: CliError | None = None) -> None:
        super().__init__(message)
        self.unreachable = unreachable


async def open_channel(ctx: Context, opts: Options, **fields: object) -> ClientConnection:
    """Connect ``/ws/files/`` for one transfer (refusals raise ControlPlaneError/CliError)."""
    # No user: the control plane picks (root for superusers, else your server account).
    params = {"server": opts.server}
    if opts.user:
        params["user"] = opts.user
    if opts.group:
        params["group"] = opts.group
    for key, value in fields.items():
        if value is None or value is False:
            continue
        params[key] = "true" if value is True else str(value)
    try:
        return await connect_channel(ctx, FILES_PATH, params=params, work_session=opts.work_session)
    except CliError as exc:
        if exc.code == "CONNECTION_FAILED":
            raise Dropped(str(exc), unreachable=exc) from exc
        raise


async def open_once(ctx: Context, opts: Options, **fields: object) -> ClientConnection:
    """`open_channel` for a transfer that is not resumed: a failure to connect is final."""
    try:
        return await open_channel(ctx, opts, **fields)
    except Dropped as exc:
        raise exc.unreachable or CliError(str(exc)) from None


def _closed(exc: ConnectionClosed) -> Exception:
    """A closed channel: a refusal (4xxx with a JSON reason) or a drop worth retrying."""
    frame = exc.rcvd
    if frame is not None and frame.code == 1011:
        return TransferFailed("internal", "the transfer failed on the agent (see its log)")
    if frame is not None and frame.code in (4400, 4403):
        try:
            reason = _json(frame.reason)
            return TransferFailed(str(reason.get("code")), str(reason.get("detail")))
        except (CliError, AttributeError):
            return TransferFailed("refused", frame.reason or "refused by the agent")
    return Dropped(str(exc))


def _json(text: str) -> Any:
    """A control frame's JSON value. The standard library's parser: the agent's few flat
    control frames do not need pydantic_core's (``shared.jsontext``), whose import was 12
    ms of every start; nesting deep enough to exhaust the stack ends in RecursionError,
    refused like any other malformed frame.

    Raises:
        CliError: the text is not JSON.
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise CliError("the agent sent a malformed control frame") from None


async def recv_control(ws: ClientConnection) -> dict[str, Any]:
    """The next frame, which must be a control object; ``error`` raises TransferFailed."""
    try:
        frame = await ws.recv()
    except ConnectionClosed as exc:
        raise _closed(exc) from None
    if isinstance(frame, bytes):
        raise CliError("the agent sent data where a control frame was expected")
    obj = _json(frame)
    if not isinstance(obj, dict):
        raise CliError("the agent sent a malformed control frame")
    if obj.get("type") == "error":
        raise TransferFailed(str(obj.get("code")), str(obj.get("message")))
    return obj


async def with_retries(ctx: Context, attempt: Callable[[], Any], retries: int) -> Any:
    """Run ``attempt`` again after a drop, with a growing delay, at most ``retries`` times."""
    delays = backoff_delays(0.5, 5.0)
    for number in range(retries + 1):
        try:
            return await attempt()
        except Dropped as exc:
            if number == 0 and exc.unreachable is not None:
                raise exc.unreachable from None  # never connected: nothing to resume
            if number == retries:
                raise CliError(f"the connection dropped too often: {exc}") from None
            delay = next(delays)
            ctx.out.info(f"agentctl: connection dropped ({exc}); resuming in {delay:.1f}s")
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def _hash_prefix(fd: int, length: int, hasher: Any) -> None:
    done = 0
    while done < length:
        chunk = os.pread(fd, min(CHUNK_BYTES, length - done), done)
        if not chunk:
            raise CliError("the local file shrank while it was read")
        hasher.update(chunk)
        done += len(chunk)


async def upload_file(
    ctx: Context,
    opts: Options,
    local: Path,
    remote: str,
    *,
    name: str,
    report: Report,
    expect_sha256: str | None = None,
    tid: str | None = None,
    retries: int = RETRIES,
) -> dict[str, Any]:
    """Upload one regular file; return the agent's ``done`` plus ``resumed_from``."""
    keep_large_buffers()  # chunks and their masked copies from the heap, not one mmap each
    st = os.stat(local)
    size = st.st_size
    real = os.path.realpath(local)  # noqa: ASYNC240 (a local lookup, microseconds)
    tid = tid or transfer_id(
        "upload", opts.server, opts.user, remote, name, real, size, st.st_mtime_ns
    )
    first_offset: list[int] = []

    async def attempt() -> dict[str, Any]:
        ws = await open_channel(
            ctx, opts, op="upload", path=remote, name=name, transfer_id=tid, size=size,
            overwrite=opts.overwrite, expect_sha256=expect_sha256,
        )  # fmt: skip
        async with contextlib.aclosing(_Closing(ws)):
            ready = await recv_control(ws)
            offset = int(ready["offset"])
            first_offset.append(offset)
            fd = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
            hasher = hashlib.sha256()
            disk = _DiskReader(fd, offset, hasher)
            try:
                report(offset)
                position = offset
                while chunk := await disk.get():
                    position += len(chunk)
                    try:
                        await ws.send(chunk)  # masked into a frame of its own: chunk is free
                    except ConnectionClosed as exc:
                        raise _closed(exc) from None
                    finally:
                        disk.done(chunk)
                    report(position)
            finally:
                await disk.aclose()
                os.close(fd)
            digest = hasher.hexdigest()
            try:
                await ws.send(json.dumps({"type": "end", "size": position, "sha256": digest}))
            except ConnectionClosed as exc:
                raise _closed(exc) from None
            done = await recv_control(ws)
            if done.get("sha256") != digest:
                raise CliError(f"SHA-256 mismatch: sent {digest}, the agent stored {done}")
            return done

    done: dict[str, Any] = await with_retries(ctx, attempt, retries)
    done["resumed_from"] = first_offset[-1] if first_offset else 0
    return done


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
            await asyncio.to_thread(_hash_prefix, fd, offset, hasher)
            ws = await open_channel(ctx, opts, op="download", path=remote, offset=offset)

            def readied(ready: dict[str, Any]) -> None:
                first_offset.append(offset)
                if on_ready is not None:
                    on_ready(ready)

            async with contextlib.aclosing(_Closing(ws)):
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
                done = _json(frame)
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
            raise _closed(exc) from None
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
    disk = _DiskWriter(fd, hasher, offset)
    try:
        while True:
            try:
                frame = await ws.recv()
            except ConnectionClosed as exc:
                raise _closed(exc) from None
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


class _DiskReader:
    """Reads the file ahead in a thread (a few chunks at most) and hashes each chunk in a
    second one while the next is read, so the event loop only sends; the prefix a resumed
    upload skips is hashed first. What is not in the page cache is read around it
    (``CacheAwareReader``).

    The chunks are views of the reader's buffers: ``free`` holds the buffers the loop is
    done with (:meth:`done`), so the thread never reads into one still queued or being
    sent. The hand-overs are janus queues: the loop's ``get`` is an ordinary await (Ctrl-C
    cancels it at once, no thread is left blocked in ``get``), and closing the queues wakes
    the thread if it is blocked on one.
    """

    AHEAD = 4
    """Chunks read ahead at most (plus the one being sent)."""

    def __init__(self, fd: int, offset: int, hasher: Any) -> None:
        self.fd, self.offset, self.hasher = fd, offset, hasher
        self.q: janus.Queue[memoryview | OSError | CliError] = janus.Queue(maxsize=self.AHEAD)
        self.free: janus.Queue[None] = janus.Queue(maxsize=self.AHEAD + 1)
        for _ in range(self.AHEAD + 1):
            self.free.sync_q.put(None)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        out = self.q.sync_q
        reader: CacheAwareReader | None = None
        hashing = ThreadPoolExecutor(1, thread_name_prefix="agentctl-hash")
        hashed: Future[None] | None = None
        try:
            try:
                _hash_prefix(self.fd, self.offset, self.hasher)
                # AHEAD queued, one being sent, one being read (the one before it may still
                # be hashing: it is done before the next read, which needs no such buffer).
                reader = CacheAwareReader(self.fd, CHUNK_BYTES, buffers=self.AHEAD + 2)
                position = self.offset
                while True:
                    self.free.sync_q.get()
                    chunk = reader.read(position)
                    if hashed is not None:
                        hashed.result()  # in order, and at most one chunk behind the reads
                        hashed = None
                    if not chunk:
                        break
                    # Hashed in the other thread while the next chunk is read (both release
                    # the GIL): one after the other, they made this the upload's slowest stage.
                    # A view of its own: the loop releases ``chunk`` once it is sent.
                    hashed = hashing.submit(self.hasher.update, chunk[:])
                    position += len(chunk)
                    out.put(chunk)
                out.put(memoryview(b""))
            except (OSError, CliError) as exc:
                out.put(exc)
        except janus.SyncQueueShutDown:
            pass  # closed: the transfer ended or was abandoned
        finally:
            hashing.shutdown(wait=True)  # no hash reads a buffer once it is freed
            if reader is not None:
                reader.close()

    async def get(self) -> memoryview:
        """The next chunk (empty at the end of the file); :meth:`done` when sent."""
        item = await self.q.async_q.get()
        if isinstance(item, OSError):
            raise CliError(f"cannot read the file: {item}")
        if isinstance(item, CliError):
            raise item
        return item

    def done(self, chunk: memoryview) -> None:
        """``chunk`` was sent: its buffer may be read into again."""
        chunk.release()
        self.free.async_q.put_nowait(None)

    async def aclose(self) -> None:
        """Stop reading ahead and wait for the thread."""
        self.q.close()
        self.free.close()
        await self.q.wait_closed()
        await self.free.wait_closed()
        await asyncio.to_thread(self.thread.join)


class _DiskWriter:
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


class _Closing:
    """``aclosing`` adapter: close the websocket however the attempt ends."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
