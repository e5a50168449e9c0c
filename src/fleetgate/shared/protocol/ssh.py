"""SSH access through a work session: scopes and the certificate key id. Pure: no I/O.

The control plane is an SSH certificate authority. A user certificate it issues carries
a *key id* that binds it to one server and one work session (OpenSSH rejects unknown
critical options, and so does asyncssh, so the binding travels in the signed key id):
``fleetgate:v1:server=<uuid>:session=<id or ->:user=<login>``. The agent accepts a
certificate only when the key id names its own server and the work session of the
channel the connection arrived on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from uuid import UUID


__all__ = [
    "SSH_CHANNEL_SCOPES",
    "SSH_SCOPES",
    "CertificateBinding",
    "certificate_extensions",
    "format_key_id",
    "parse_key_id",
]

SSH_SCOPES: dict[str, str] = {
    "shell": "websh",
    "exec": "command",
    "sftp": "webftp",
    "forward": "tunnel",
}
"""The work-session scope each kind of SSH request needs."""

SSH_CHANNEL_SCOPES: tuple[str, ...] = ("websh", "command", "webftp", "tunnel")
"""An ``ssh`` channel opens when the work session has at least one of these."""

_KEY_ID = re.compile(
    r"^fleetgate:v1:server=(?P<server>[0-9a-f-]{36}):session=(?P<session>[^:]{1,128})"
    r":user=(?P<user>[^:]{1,64})$"
)


@dataclass(frozen=True, slots=True)
class CertificateBinding:
    """What a certificate's key id binds it to."""

    server_id: UUID
    work_session: str | None
    user: str


def format_key_id(server_id: UUID | str, work_session: str | None, user: str) -> str:
    """The key id of a certificate for ``user`` on one server in one work session."""
    return f"fleetgate:v1:server={UUID(str(server_id))}:session={work_session or '-'}:user={user}"


def parse_key_id(key_id: str) -> CertificateBinding | None:
    """The binding in a key id, or ``None`` when it is not one of ours."""
    match = _KEY_ID.match(key_id)
    if match is None:
        return None
    try:
        server = UUID(match["server"])
    except ValueError:
        return None
    session = match["session"]
    return CertificateBinding(server, None if session == "-" else session, match["user"])


def certificate_extensions(scopes: list[str] | tuple[str, ...]) -> dict[str, bool]:
    """The certificate extensions a work session's scopes allow.

    ``permit-pty`` only with ``websh``, ``permit-port-forwarding`` only with ``tunnel``;
    never agent or X11 forwarding (the agent's own configuration decides those).
    """
    return {
        "permit_pty": "websh" in scopes,
        "permit_port_forwarding": "tunnel" in scopes,
        "permit_agent_forwarding": False,
        "permit_x11_forwarding": False,
        "permit_user_rc": False,
    }
