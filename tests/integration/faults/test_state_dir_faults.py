"""An unusable state directory or spool database stops the agent at once with status 73.

Each case starts the real agent (``python -m fleetgate.agent run``) and expects it to exit within
seconds, before dialling anything, with a log line that names the path and the reason.
Full and read-only file systems are tiny tmpfs mounts made by the test (root only).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetgate.agent.cli import EXIT_STATE
from fleetgate.agent.errors import StateDirError
from fleetgate.agent.spool import SPOOL_FILE
from fleetgate.shared.protocol import CommandRun, encode
from tests.integration.backhaul.conftest import RunningAgent, agent_config
from tests.support.agent import write_agent_config
from tests.support.controlplane import REPO_ROOT
from tests.support.fake_cp import scripted_control_plane


def run_agent(workdir: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run the agent once against an address nobody listens on; it must exit by itself."""
    key_file = workdir / "server.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("k" * 32)
    config = workdir / "agent.toml"
    write_agent_config(
        config,
        url="http://127.0.0.1:9",
        server_id=str(uuid.uuid4()),
        key_file=key_file,
        state_dir=state_dir,
        sections={"logging": {"format": "json"}},
    )
    return subprocess.run(
        [sys.executable, "-m", "fleetgate.agent", "run", "--config", str(config)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@contextlib.contextmanager
def tmpfs(path: Path, *options: str) -> Iterator[Path]:
    """Mount a tmpfs (64 KiB unless a ``size=`` option says otherwise) at ``path`` for the
    duration; always unmounted after."""
    path.mkdir()
    if not any(o.startswith("size=") for o in options):
        options = ("size=64k", *options)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
        check=True,
        timeout=10,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True, timeout=10)


def fill(directory: Path, *, leave_pages: int = 0) -> None:
    """Fill the file system of ``directory``, then free ``leave_pages`` 4 KiB pages."""
    pages: list[Path] = []
    with contextlib.suppress(OSError):
        for n in range(10_000):
            page = directory / f"filler-{n}"
            pages.append(page)
            with page.open("wb") as fh:
                fh.write(b"\0" * 4096)
    for page in pages[-1 - leave_pages :]:
        page.unlink(missing_ok=True)
    if leave_pages == 0:
        with pytest.raises(OSError) as exc:
            (directory / "probe").write_bytes(b"\0" * 4096)
        assert exc.value.errno == errno.ENOSPC


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == EXIT_STATE, result.stderr[-2000:]
    assert "agent.state_dir_error" in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr[-2000:]


def test_a_state_dir_that_cannot_be_created_exits_73(tmp_path: Path) -> None:
    """A state_dir below a regular file cannot exist: a clear error, status 73."""
    (tmp_path / "file").write_text("not a directory")
    result = run_agent(tmp_path, tmp_path / "file" / "state")
    assert_refused(result, "file/state", "Not a directory")


def test_a_spool_that_is_not_a_database_exits_73(tmp_path: Path) -> None:
    """A corrupt spool file is reported with its path, not overwritten."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / SPOOL_FILE).write_bytes(b"this is not an SQLite database, it is a sentence. " * 100)
    result = run_agent(tmp_path, state)
    assert_refused(result, SPOOL_FILE, "not a database")
    assert (state / SPOOL_FILE).read_bytes().startswith(b"this is not")


@pytest.mark.root  # mounts a tmpfs
def test_a_read_only_state_dir_exits_73(tmp_path: Path) -> None:
    """A read-only file system is refused at start."""
    with tmpfs(tmp_path / "ro", "ro") as mount:
        result = run_agent(tmp_path, mount)
    assert_refused(result, "Read-only file system")


@pytest.mark.root  # mounts a tmpfs
def test_a_full_disk_exits_73(tmp_path: Path) -> None:
    """No space at all: the write probe fails and says so."""
    with tmpfs(tmp_path / "full") as mount:
        state = mount / "state"
        state.mkdir(mode=0o700)
        fill(mount)
        result = run_agent(tmp_path, state)
    assert_refused(result, "No space left on device")


@pytest.mark.root  # mounts a tmpfs
def test_room_for_the_probe_but_not_the_database_exits_73(tmp_path: Path) -> None:
    """The probe passes, creating the spool database fails: SQLite's error is reported."""
    with tmpfs(tmp_path / "tight") as mount:
        state = mount / "state"
        state.mkdir(mode=0o700)
        fill(mount, leave_pages=2)
        result = run_agent(tmp_path, state)
    assert_refused(result, SPOOL_FILE, "SQLITE_", "KiB free")


@pytest.mark.root  # mounts a tmpfs
async def test_a_disk_that_fills_up_while_running_stops_the_agent(tmp_path: Path) -> None:
    """A spool write that fails later stops the agent with StateDirError (status 73):
    it never sends a report it could not keep."""
    with tmpfs(tmp_path / "small", "size=256k") as mount:
        async with scripted_control_plane() as cp:
            config = agent_config(cp, tmp_path).model_copy(update={"state_dir": mount / "state"})
            agent = RunningAgent(config)
            await cp.connections.get()
            # Never confirmed, so every output report stays in the spool until it is full.
            flood = "head -c 4000000 /dev/zero | tr '\\0' a"
            await cp.send(encode(CommandRun(command_id=uuid.uuid4(), line=flood)))
            with pytest.raises(StateDirError, match=r"full|SQLITE_") as exc:
                async with asyncio.timeout(45):
                    await agent.task
    print(exc.value)
    assert SPOOL_FILE in str(exc.value)
