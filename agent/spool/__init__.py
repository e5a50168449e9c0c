"""Bookkeeping of what the agent received and what it still owes the control plane."""

from agent.spool.inbox import CommandState, Inbox
from agent.spool.reports import PendingReports


__all__ = ["CommandState", "Inbox", "PendingReports"]
