"""What every websocket of the agent presents: its TLS context and its credentials.

Every websocket the agent opens (the backhaul, each channel, recording uploads) takes its
context from :func:`ssl_context`, so one setting (``control_plane.ca_file``,
``verify_tls``) governs them all. The context is built once per configuration: loading a
CA bundle for every channel would cost milliseconds per terminal or transfer.
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

from fleetgate.agent.config import AgentConfig
from fleetgate.agent.config.link import ControlPlaneConfig
from fleetgate.agent.errors import ConfigError


__all__ = ["agent_headers", "ssl_context"]


def ssl_context(cp: ControlPlaneConfig) -> ssl.SSLContext | None:
    """The TLS context for ``wss://``; verification is on unless explicitly disabled.

    Raises:
        ConfigError: ``control_plane.ca_file`` cannot be read or holds no certificate.
    """
    if cp.url.scheme != "https":
        return None
    return _context(cp.ca_file, cp.verify_tls)


@functools.lru_cache(maxsize=4)
def _context(ca_file: Path | None, verify: bool) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except OSError as exc:  # ssl.SSLError is an OSError too
        reason = exc.strerror or str(exc)
        raise ConfigError(f"control_plane.ca_file: cannot load {ca_file}: {reason}") from exc
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def agent_headers(config: AgentConfig, key: str) -> dict[str, str]:
    """The agent's credentials as the control plane expects them (never logged)."""
    return {"Authorization": f'id="{config.identity.server_id}", key="{key}"'}
