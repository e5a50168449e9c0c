"""The agent hub: backhaul websocket endpoint, connected-agent registry, delivery."""

from controlplane.hub.hub import Hub
from controlplane.hub.notifier import Notifier
from controlplane.hub.registry import AgentConnection, Registry


__all__ = ["AgentConnection", "Hub", "Notifier", "Registry"]
