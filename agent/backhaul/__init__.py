"""The agent's only network link: the websocket to the control plane."""

from agent.backhaul.connection import Backhaul, CommandHandler, LinkState, ssl_context
from agent.backhaul.outbox import Outbox
from agent.backhaul.retry import Backoff, backoff_delays, classify


__all__ = [
    "Backhaul",
    "Backoff",
    "CommandHandler",
    "LinkState",
    "Outbox",
    "backoff_delays",
    "classify",
    "ssl_context",
]
