"""The hop token: what lets a replica relay a channel's agent side to another replica
(``controlplane.cluster.hop``). Pure: an HMAC-SHA256, with the cluster's key, of the
channel id, the server id and an expiry; nothing else can make one."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass


__all__ = ["HOP_HEADER", "HOP_PATH", "TOKEN_TTL", "HopClaim", "hop_token", "verify_hop"]

HOP_PATH = "/ws/cluster/channels/{channel_id}/"
HOP_HEADER = "x-fleetgate-hop"
TOKEN_TTL = 30
"""Seconds a hop token is accepted (it is used at once; clocks of replicas roughly agree)."""


@dataclass(frozen=True, slots=True)
class HopClaim:
    """What a valid hop token says: the agent of ``server_id`` serves ``channel_id``."""

    channel_id: str
    server_id: str


def _mac(key: bytes, channel_id: str, server_id: str, expires: int) -> str:
    message = f"fleetgate-hop|{channel_id}|{server_id}|{expires}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def hop_token(key: bytes, channel_id: str, server_id: str, *, now: float | None = None) -> str:
    """The token a replica presents to relay ``channel_id`` of ``server_id``."""
    expires = int((time.time() if now is None else now) + TOKEN_TTL)
    return f"{server_id}.{expires}.{_mac(key, channel_id, server_id, expires)}"


def verify_hop(
    key: bytes, channel_id: str, token: str | None, *, now: float | None = None
) -> HopClaim | None:
    """The claim of a valid, unexpired token for ``channel_id``; ``None`` otherwise."""
    if not token or len(token) > 256:
        return None
    parts = token.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    server_id, expires_text, mac = parts
    expires = int(expires_text)
    current = time.time() if now is None else now
    if not current <= expires <= current + TOKEN_TTL + 5:
        return None
    if not hmac.compare_digest(mac, _mac(key, channel_id, server_id, expires)):
        return None
    return HopClaim(channel_id, server_id)
