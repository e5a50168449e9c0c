"""Interactive terminals (websh): a login shell on a PTY per channel, recorded."""

from fleetgate.agent.websh.service import WebshService


__all__ = ["WebshService"]
