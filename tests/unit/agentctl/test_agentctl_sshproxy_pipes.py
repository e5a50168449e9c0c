"""ssh-proxy widens the pipes ssh gives it, so bulk transfers move in large frames."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

from fleetgate.agentctl.sshproxy import PIPE_BYTES


def _pipe_max() -> int:
    try:
        return int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except OSError:
        return 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_proxy(
    tmp_path: Path, stdin: int | IO[bytes], stdout: int | IO[bytes]
) -> subprocess.CompletedProcess[bytes]:
    config = tmp_path / "config.toml"
    config.write_text(f'url = "http://127.0.0.1:{_closed_port()}"\ntoken = "t"\n')
    return subprocess.run(
        [sys.executable, "-m", "fleetgate.agentctl", "ssh-proxy", "--config", str(config), "srv"],
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(
    not hasattr(fcntl, "F_GETPIPE_SZ") or _pipe_max() < PIPE_BYTES,
    reason="needs Linux pipes of at least 1 MiB (fs.pipe-max-size)",
)
def test_the_pipes_from_and_to_ssh_are_widened(tmp_path: Path) -> None:
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    try:
        assert fcntl.fcntl(stdin_w, fcntl.F_GETPIPE_SZ) < PIPE_BYTES
        done = _run_proxy(tmp_path, stdin=stdin_r, stdout=stdout_w)
        # The pipe's size belongs to the pipe: the proxy's ends changed it for both.
        assert fcntl.fcntl(stdin_w, fcntl.F_GETPIPE_SZ) == PIPE_BYTES
        assert fcntl.fcntl(stdout_r, fcntl.F_GETPIPE_SZ) == PIPE_BYTES
    finally:
        for fd in (stdin_r, stdin_w, stdout_r, stdout_w):
            os.close(fd)
    assert done.returncode == 255  # nothing listens: it says so, as ssh would
    assert b"cannot reach" in done.stderr


def test_streams_that_are_not_pipes_are_left_alone(tmp_path: Path) -> None:
    with (tmp_path / "out").open("wb") as out:
        done = _run_proxy(tmp_path, stdin=subprocess.DEVNULL, stdout=out)
    assert done.returncode == 255
    assert b"cannot reach" in done.stderr
