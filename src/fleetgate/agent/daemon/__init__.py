"""The composition root: builds every component, owns them in one TaskGroup, stops them.

:mod:`.lifecycle` runs the daemon (and its phased shutdown); :mod:`.wiring` builds the
components and connects them.
"""

from fleetgate.agent.daemon.lifecycle import adopt_root_groups, prepare_state_dir, run


__all__ = ["adopt_root_groups", "prepare_state_dir", "run"]
