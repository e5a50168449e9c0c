"""Sudo mediation: the registry of sessions the agent started and the decision server the
sudo approval plugin asks (``docs/sudo.md``)."""

from fleetgate.agent.sudo.registry import SudoSessions
from fleetgate.agent.sudo.server import Decided, SudoDecisionServer


__all__ = ["Decided", "SudoDecisionServer", "SudoSessions"]
