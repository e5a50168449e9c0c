"""A single file's descriptor handed to the agent: opened as the user, checked by the worker.

The worker is driven directly (``tests.support.files.Worker`` with a socket as stdout, as
the agent starts it) and plays the agent's part here: it receives the descriptor, writes
or reads through it, and tells the worker what it wrote. The full stack (the agent's own
writer and reader) is covered in ``test_files_transfer.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetgate.agent.files.handover import (
    CAP_SYS_RESOURCE,
    drop_capability,
    drop_resource_override,
)
from fleetgate.agent.files.workerproc import PipeReader
from fleetgate.shared.errors import TransferError
from fleetgate.shared.files.framing import encode_text
from tests.support.files import Worker, request
from tests.support.users import CreatedUser


pytestmark = pytest.mark.root  # creates users, switches uid

CAP_DAC_OVERRIDE = 1


def owned_dir(path: Path, user: CreatedUser) -> Path:
    path.mkdir()
    os.chown(path, user.uid, user.gid)
    return path


def start_upload(target: Path, user: CreatedUser, size: int, **fields: object) -> Worker:
    return Worker(
        request("upload", str(target), size=size, handover=True, **fields),
        user.name,
        socket_out=True,
    )


def end(data: bytes, *, claimed: bytes | None = None, offset: int = 0) -> dict[str, object]:
    """The agent's ``end`` after writing ``data`` (the client claims ``claimed``)."""
    sent = data if claimed is None else claimed
    return {
        "type": "end",
        "size": len(sent),
        "sha256": hashlib.sha256(sent).hexdigest(),
        "received": offset + len(data) if claimed is None else len(data),
        "computed": hashlib.sha256(data).hexdigest(),
    }


def test_upload_hands_over_the_users_temporary_file(area: Path, user: CreatedUser) -> None:
    work = owned_dir(area / "work", user)
    target = work / "f"
    data = os.urandom(300_000)
    worker = start_upload(target, user, len(data))
    handover = worker.read_text()
    assert handover == {"type": "handover", "op": "upload", "offset": 0}
    [fd] = worker.fds
    st = os.fstat(fd)
    # Opened by the worker as the user: a 0600 file of theirs, beside the target.
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (user.uid, user.gid, 0o600)
    [temp] = work.iterdir()
    assert temp.name.endswith(".fleet-part")
    assert temp.stat().st_ino == st.st_ino
    ready = worker.read_text()
    assert ready["type"] == "ready"
    os.pwrite(fd, data, 0)
    worker.send(end(data))
    done = worker.read_text()
    assert done["type"] == "done", done
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert worker.wait() == 0
    assert target.read_bytes() == data
    assert target.stat().st_uid == user.uid
    assert sorted(p.name for p in work.iterdir()) == ["f"]


def test_upload_checks_what_the_agent_reports(area: Path, user: CreatedUser) -> None:
    work = owned_dir(area / "work", user)
    target = work / "f"
    data = b"the real bytes"
    # The client claims other bytes than those written: checksum, nothing in place.
    worker = start_upload(target, user, len(data))
    worker.read_text()
    worker.read_text()
    os.pwrite(worker.fds[0], data, 0)
    worker.send(end(data, claimed=b"other  bytes!!"))
    assert worker.read_text()["code"] == "checksum"
    assert worker.wait() == 1
    assert list(work.iterdir()) == []
    # More bytes than announced: the worker's ledger refuses them too.
    worker = start_upload(target, user, 3)
    worker.read_text()
    worker.read_text()
    worker.send(end(data))
    assert worker.read_text()["code"] == "size_mismatch"
    worker.wait()
    # The agent stops the upload (a write failed, a limit was crossed): its reason is sent.
    worker = start_upload(target, user, len(data))
    worker.read_text()
    worker.read_text()
    worker.send({"type": "abort", "code": "no_space", "message": "disk full"})
    assert worker.read_text() == {"type": "error", "code": "no_space", "message": "disk full"}
    assert worker.wait() == 1
    assert not target.exists()
    # Data frames are not the worker's to read once it handed the file over.
    worker = start_upload(target, user, len(data))
    worker.read_text()
    worker.read_text()
    worker.send_data(data)
    worker.proc.stdin.flush()  # type: ignore[union-attr]
    assert worker.read_text()["code"] == "malformed"
    worker.wait()


def test_refusals_come_before_any_handover(area: Path, user: CreatedUser) -> None:
    secret = area / "secret"
    secret.write_bytes(b"root only")
    secret.chmod(0o600)
    worker = Worker(request("download", str(secret), handover=True), user.name, socket_out=True)
    final = worker.read_text()
    assert final["code"] == "permission"
    assert worker.wait() == 1
    assert worker.fds == []
    worker = start_upload(secret, user, 3, overwrite=True)
    assert worker.read_text()["code"] == "permission"
    assert worker.wait() == 1
    assert worker.fds == []


def test_download_hands_over_a_read_only_descriptor(area: Path, user: CreatedUser) -> None:
    source = area / "readable"
    data = os.urandom(100_000)
    source.write_bytes(data)
    source.chmod(0o644)
    worker = Worker(
        request("download", str(source), offset=10, handover=True), user.name, socket_out=True
    )
    handover = worker.read_text()
    assert handover == {
        "type": "handover", "op": "download", "offset": 10, "size": len(data),
        "mode": 0o644, "path": str(source),
    }  # fmt: skip
    [fd] = worker.fds
    assert os.pread(fd, len(data), 0) == data
    with pytest.raises(OSError):
        os.pwrite(fd, b"x", 0)  # opened for reading only
    assert worker.wait() == 0


def test_handover_needs_a_socket(area: Path, user: CreatedUser) -> None:
    source = area / "readable"
    source.write_bytes(b"data")
    source.chmod(0o644)
    worker = Worker(request("download", str(source), handover=True), user.name)
    assert worker.read_text()["code"] == "internal"
    assert worker.wait() == 1


def effective_caps(tid: int) -> int:
    status = Path(f"/proc/self/task/{tid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("CapEff:"))[7:], 16)


def in_a_thread(drop: Callable[[], None]) -> tuple[int, int]:
    """A new thread's effective capabilities before and after ``drop()``."""
    seen: list[int] = []

    def run() -> None:
        seen.append(effective_caps(threading.get_native_id()))
        drop()
        seen.append(effective_caps(threading.get_native_id()))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    before, after = seen
    return before, after


def test_the_writing_thread_drops_cap_sys_resource() -> None:
    """Root's writes would ignore the user's quota and the reserved blocks: the agent's
    writing thread gives up CAP_SYS_RESOURCE, and only that thread."""
    bit = 1 << CAP_SYS_RESOURCE
    ours = effective_caps(threading.get_native_id())
    before, after = in_a_thread(drop_resource_override)
    assert before == ours
    assert after == before & ~bit
    # The same call on a capability this (root) test holds for sure: only it goes, only
    # in that thread.
    assert ours & (1 << CAP_DAC_OVERRIDE)
    before, after = in_a_thread(lambda: drop_capability(CAP_DAC_OVERRIDE))
    assert after == before & ~(1 << CAP_DAC_OVERRIDE)
    assert effective_caps(threading.get_native_id()) == ours


def test_the_agent_keeps_only_handed_over_descriptors() -> None:
    """Descriptors arrive close-on-exec with the frame they came with; any that come with
    another frame are closed, so a worker cannot pile them up in the agent."""

    async def scenario() -> None:
        ours, theirs = socket.socketpair()
        reader = PipeReader(ours)
        try:
            frame = encode_text({"type": "ready", "offset": 0})
            sent = os.dup(theirs.fileno())  # any descriptor will do
            try:
                socket.send_fds(theirs, [frame], [sent])
            finally:
                os.close(sent)
            theirs.sendall(frame)
            async with asyncio.timeout(10):
                assert await reader.readinto(memoryview(bytearray(len(frame))))
                [fd] = reader.fds
                assert not os.get_inheritable(fd)
                reader.discard_fds()
                with pytest.raises(OSError):
                    os.fstat(fd)
                assert await reader.readinto(memoryview(bytearray(len(frame))))
                with pytest.raises(TransferError) as missing:
                    reader.take_fd()  # a "handover" without its descriptor
                assert missing.value.code == "internal"
        finally:
            reader.close()
            theirs.close()

    asyncio.run(scenario())
