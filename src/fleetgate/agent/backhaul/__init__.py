"""The agent's only network link: the websocket to the control plane."""

from fleetgate.agent.backhaul.channel import ChannelLink, dial_channel, dial_path
from fleetgate.agent.backhaul.connection import Backhaul, LinkState
from fleetgate.agent.backhaul.handlers import ChannelHandler, CommandHandler
from fleetgate.agent.backhaul.outbox import Outbox
from fleetgate.agent.backhaul.retry import classify
from fleetgate.agent.backhaul.tls import agent_headers, ssl_context


__all__ = [
    "Backhaul",
    "ChannelHandler",
    "ChannelLink",
    "CommandHandler",
    "LinkState",
    "Outbox",
    "agent_headers",
    "classify",
    "dial_channel",
    "dial_path",
    "ssl_context",
]
