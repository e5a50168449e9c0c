"""The agent hub: backhaul websocket endpoint, connected-agent registry, delivery."""

from fleetgate.controlplane.hub.hub import Hub
from fleetgate.controlplane.hub.notifier import Notifier
from fleetgate.controlplane.hub.registry import AgentConnection, Registry


__all__ = ["AgentConnection", "Hub", "Notifier", "Registry"]
