"""What every websocket of the agent presents: its TLS context and its credentials."""

from __future__ import annotations

import ssl

from fleetgate.agent.config import AgentConfig, ControlPlaneConfig


__all__ = ["agent_headers", "ssl_context"]


def ssl_context(cp: ControlPlaneConfig) -> ssl.SSLContext | None:
    """The TLS context for ``wss://``; verification is on unless explicitly disabled."""
    if cp.url.scheme != "https":
        return None
    ctx = ssl.create_default_context(cafile=str(cp.ca_file) if cp.ca_file else None)
    if not cp.verify_tls:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def agent_headers(config: AgentConfig, key: str) -> dict[str, str]:
    """The agent's credentials as the control plane expects them (never logged)."""
    return {"Authorization": f'id="{config.identity.server_id}", key="{key}"'}
