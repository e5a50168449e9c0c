"""Ending a terminal's processes: SIGHUP to its whole session, then SIGKILL, then reap.

A login shell is the leader of its own session; what it started (jobs in other process
groups, ``nohup`` children) stays in that session unless it calls ``setsid`` itself. So
the session id, not only the shell's process group, says what belongs to the terminal.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path


__all__ = ["end_session", "session_members"]

_POLL = 0.02


def session_members(sid: int, proc: Path = Path("/proc")) -> list[int]:
    """Pids of the live processes whose session id is ``sid`` (zombies excluded)."""
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name is in parentheses and may contain spaces: split after it.
        fields = stat.rsplit(")", 1)[1].split()
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            members.append(int(entry.name))
    return members


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


async def end_session(process: subprocess.Popen[bytes], grace: float) -> int:
    """SIGHUP (and SIGCONT, for stopped jobs) to the shell's session, SIGKILL what is left
    after ``grace`` seconds, reap the shell; returns its exit status (128 + n for signal n).
    """
    sid = process.pid
    members = await asyncio.to_thread(session_members, sid)
    if process.poll() is None and sid not in members:
        members.append(sid)
    _signal_all(members, signal.SIGHUP)
    _signal_all(members, signal.SIGCONT)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    # Polling with a deadline: the session's other members are not our children, so
    # there is no event to wait for; the shell itself is usually gone at the first look.
    while loop.time() < deadline:
        process.poll()
        members = await asyncio.to_thread(session_members, sid)
        if not members:
            break
        await asyncio.sleep(_POLL)
    else:
        _signal_all(await asyncio.to_thread(session_members, sid), signal.SIGKILL)
    while process.poll() is None:
        # Exits at once after SIGKILL; the loop only covers the scheduling delay.
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await asyncio.sleep(_POLL)
    return exit_status(process.returncode)


def exit_status(returncode: int) -> int:
    """A shell-style exit status: ``128 + n`` for a process killed by signal ``n``."""
    return 128 - returncode if returncode < 0 else returncode
