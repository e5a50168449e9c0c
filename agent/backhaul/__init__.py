"""The agent's only network link: the websocket to the control plane."""

from agent.backhaul.channel import ChannelLink, dial_channel
from agent.backhaul.connection import Backhaul, ChannelHandler, CommandHandler, LinkState
from agent.backhaul.outbox import Outbox
from agent.backhaul.retry import Backoff, backoff_delays, classify
from agent.backhaul.tls import agent_headers, ssl_context


__all__ = [
    "Backhaul",
    "Backoff",
    "ChannelHandler",
    "ChannelLink",
    "CommandHandler",
    "LinkState",
    "Outbox",
    "agent_headers",
    "backoff_delays",
    "classify",
    "dial_channel",
    "ssl_context",
]
