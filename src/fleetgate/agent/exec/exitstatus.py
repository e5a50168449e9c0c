"""How a finished process is reported: exit code, error phase and message (pure).

Shell conventions, so that operators read them as they would on the server: a timeout is
exit 124 (as ``timeout(1)``), a process killed by signal ``n`` is ``128 + n``.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass


__all__ = ["ExitStatus", "exit_status"]


@dataclass(frozen=True)
class ExitStatus:
    """What the report says about how the command ended."""

    exit_code: int
    error_phase: str | None = None
    message: str | None = None


def exit_status(returncode: int, timed_out_after: float | None = None) -> ExitStatus:
    """Map a reaped process's ``returncode`` (negative: killed by that signal) and, when
    the agent killed it at its timeout, the seconds it ran, to the reported status."""
    if timed_out_after is not None:
        return ExitStatus(124, "timeout", f"timed out after {timed_out_after:.1f} s")
    if returncode < 0:
        return ExitStatus(128 - returncode, None, f"killed by signal {_signal_name(-returncode)}")
    return ExitStatus(returncode)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
