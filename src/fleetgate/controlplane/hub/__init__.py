"""The agent hub: backhaul websocket endpoint, connected-agent registry, delivery."""

from fleetgate.controlplane.hub.hub import Hub
from fleetgate.controlplane.hub.registry import AgentConnection, Registry
from fleetgate.controlplane.hub.wakeups import CommandWakeups


__all__ = ["AgentConnection", "CommandWakeups", "Hub", "Registry"]
