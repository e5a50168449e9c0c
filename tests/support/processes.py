"""Stopping the subprocesses the tests start (control plane, agents)."""

from __future__ import annotations

import signal
import subprocess


__all__ = ["end_process"]


def end_process(proc: subprocess.Popen[bytes] | None, *, timeout: float, crash: bool) -> None:
    """End ``proc`` and reap it: SIGKILL at once (``crash``), or SIGTERM then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    if crash:
        proc.kill()
    else:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(timeout)
