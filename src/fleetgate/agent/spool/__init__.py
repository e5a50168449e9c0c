"""What the agent received and what it still owes the control plane, kept on disk.

The bookkeeping (:mod:`inbox`, :mod:`reports`, :mod:`retention`, :mod:`batch`,
:mod:`recovery`) is pure and has no I/O; :mod:`store` is the synchronous SQLite file and
:mod:`writer` its asyncio front with one worker thread.
"""

from fleetgate.agent.spool.batch import Batch, FinishedEntry
from fleetgate.agent.spool.inbox import CommandState, Inbox
from fleetgate.agent.spool.recovery import EXIT_INTERRUPTED, interrupted_report
from fleetgate.agent.spool.reports import PendingReports
from fleetgate.agent.spool.retention import Eviction, Retention
from fleetgate.agent.spool.store import Snapshot, SpoolStore
from fleetgate.agent.spool.writer import SPOOL_FILE, Spool


__all__ = [
    "EXIT_INTERRUPTED",
    "SPOOL_FILE",
    "Batch",
    "CommandState",
    "Eviction",
    "FinishedEntry",
    "Inbox",
    "PendingReports",
    "Retention",
    "Snapshot",
    "Spool",
    "SpoolStore",
    "interrupted_report",
]
