"""Which addresses a tunnel may reach: loopback only, decided without resolving a name (pure).

The control plane refuses a tunnel to any other host when it is requested, and the agent
refuses it again before it dials.
"""

from __future__ import annotations

import ipaddress


__all__ = ["LOOPBACK", "loopback_address"]

LOOPBACK = "127.0.0.1"
"""The target when a request names no host."""


def loopback_address(host: str | None) -> str | None:
    """The address to dial for ``host``, or ``None`` when it is not loopback.

    Only literal loopback addresses (``127.0.0.0/8``, ``::1``) and ``localhost`` qualify:
    a name is never resolved, so DNS cannot turn a tunnel into a way out of the server.
    """
    if host is None or host == "localhost":
        return LOOPBACK
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address) if address.is_loopback else None
