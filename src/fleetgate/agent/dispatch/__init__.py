"""Commands from ``command.run`` to their final report.

:mod:`.dispatcher` accepts, checks and runs them under the concurrency limit;
:mod:`.gate` holds the agent's own checks, the audit lines and the sudo tracking;
:mod:`.reports` puts their reports in the outbox, with the spool's rows they depend on.
"""

from fleetgate.agent.dispatch.dispatcher import Dispatcher


__all__ = ["Dispatcher"]
