"""`cp` ends without the interpreter's teardown, its output flushed; never while another
thread still runs."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_exit_now_flushes_and_ends_with_the_code() -> None:
    done = run(
        "import atexit, sys\n"
        "from fleetgate.agentctl.entry import exit_now\n"
        "atexit.register(lambda: print('teardown ran'))\n"
        "sys.stdout.write('the output, buffered')\n"
        "exit_now(3)\n"
        "print('not reached')\n"
    )
    assert done.returncode == 3
    assert done.stdout == "the output, buffered"  # flushed; no teardown, nothing after


def test_exit_now_waits_for_the_ordinary_exit_while_a_thread_runs() -> None:
    done = run(
        "import threading, time\n"
        "from fleetgate.agentctl.entry import exit_now\n"
        "go = threading.Event()\n"
        "worker = threading.Thread(target=lambda: (go.wait(30), print('thread done')))\n"
        "worker.start()\n"
        "exit_now(3)\n"
        "print('returned')\n"
        "go.set()\n"
    )
    assert done.returncode == 0
    assert done.stdout.splitlines() == ["returned", "thread done"]
