"""What a restart makes of the commands a previous run left unfinished: pure, no I/O.

A command in the durable inbox without a final report was queued or running when the
agent stopped (a crash, SIGKILL, a power cut, or a shutdown whose grace ran out). One
that was queued never started (the running state is on disk before the spawn) and runs
after the restart. One that was running is never run again: running it twice could be
worse than not finishing it. It gets a final report instead, with ``error_phase`` ``interrupted`` and exit code
:data:`EXIT_INTERRUPTED`, so that the control plane shows a result rather than a
command that seems to run for ever.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from fleetgate.agent.spool.inbox import CommandState
from fleetgate.shared.protocol import CommandFinished


__all__ = ["EXIT_INTERRUPTED", "interrupted_report"]

EXIT_INTERRUPTED = -1
"""Exit code of an interrupted command: no status was observed (it is not 137, which
would claim the command was killed by SIGKILL; its process may have run to the end)."""

_MESSAGES = {
    CommandState.QUEUED: "the agent restarted before the command started; it was not run",
    CommandState.RUNNING: (
        "the agent restarted while the command was running; its outcome is unknown "
        "and it was not run again"
    ),
}


def interrupted_report(
    rid: int, command_id: UUID, state: CommandState, *, at: datetime
) -> CommandFinished:
    """The final report of a command a previous run of the agent left unfinished."""
    if state is CommandState.FINISHED:
        raise ValueError("a finished command is not interrupted")
    return CommandFinished(
        rid=rid,
        command_id=command_id,
        handled_at=at,
        elapsed_time=0.0,
        exit_code=EXIT_INTERRUPTED,
        success=False,
        result="",
        error_phase="interrupted",
        message=_MESSAGES[state],
    )
