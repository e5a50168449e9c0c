"""``ssh -R``: what the agent allows a client to listen on, on the server. Pure: no I/O.

OpenSSH's ``sshd`` with its defaults (``GatewayPorts no``) binds a remote forward to the
loopback interface only, and the listening socket is opened by the user's own process,
so only root may take a port below 1024. The agent listens itself (as root), so it applies
both rules explicitly: the loopback only, whatever the client asks, and a privileged port
only for a root login. A forward also needs the ``tunnel`` scope of the work session
(the certificate then has ``permit-port-forwarding``) and ``[ssh] remote_forwarding``
turned on by the server's owner.
"""

from __future__ import annotations

from fleetgate.agent.ssh.context import SshRefusal, scope_refusal
from fleetgate.shared.protocol.grants import GrantClaims


__all__ = ["FIRST_UNPRIVILEGED_PORT", "bind_host", "remote_forward_refusal"]

FIRST_UNPRIVILEGED_PORT = 1024
"""Ports below this are the kernel's privileged ones (``net.ipv4.ip_unprivileged_port_start``
by default)."""

_LOOPBACK = {"": "localhost", "localhost": "localhost", "127.0.0.1": "127.0.0.1", "::1": "::1"}
"""What a client may ask to listen on, and what the agent binds for it: an empty address
(OpenSSH's "every address") is the loopback too, as with ``GatewayPorts no``."""


def bind_host(requested: str) -> str:
    """The address the agent binds for a forward requested on ``requested``."""
    return _LOOPBACK[requested]


def remote_forward_refusal(
    host: str, port: int, *, uid: int, claims: GrantClaims | None
) -> SshRefusal | None:
    """Why ``ssh -R`` listening on ``host:port`` for a login of ``uid`` is refused
    (``None``: it is allowed). ``port`` 0 asks for any free port."""
    denied = scope_refusal("forward", claims)
    if denied is not None:
        return denied
    if host not in _LOOPBACK:
        return SshRefusal(
            "remote_forward_not_loopback",
            f"ssh -R listens on the server's loopback only (localhost, 127.0.0.1, ::1), "
            f"not on {host[:255]!r}",
        )
    if not 0 <= port <= 65535:
        return SshRefusal("remote_forward_bad_port", f"port {port} does not exist")
    if 0 < port < FIRST_UNPRIVILEGED_PORT and uid != 0:
        return SshRefusal(
            "remote_forward_privileged_port",
            f"port {port} is below {FIRST_UNPRIVILEGED_PORT}: only root may listen there",
        )
    return None
