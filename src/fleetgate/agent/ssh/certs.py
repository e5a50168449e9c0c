"""Which user certificates the agent's SSH server accepts, and why not. Pure: no I/O.

asyncssh checks the signature, the validity window and the principal on its own, but a
refused certificate only shows as ``Permission denied (publickey)``. The same checks are
made here first so the client is told the reason (in an authentication banner), plus the
one asyncssh cannot know about: the key id must bind the certificate to this server and
to the work session of the channel the connection arrived on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from fleetgate.shared.protocol.ssh import parse_key_id


__all__ = ["CertificateFacts", "refusal"]


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """What the server saw of a presented certificate."""

    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    signed_by_pinned_ca: bool
    is_user_certificate: bool = True


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(min(seconds, 253402300799), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def refusal(
    cert: CertificateFacts,
    *,
    username: str,
    server_id: UUID,
    work_session: str | None,
    now: float,
) -> str | None:
    """Why ``cert`` may not log in as ``username`` here (``None``: it may).

    ``work_session`` is the session of the channel's grant (``None`` for a token's
    channel, or an unsigned development agent): a certificate of another session is
    refused even when it is otherwise valid.
    """
    if not cert.is_user_certificate:
        return "this is not a user certificate"
    if not cert.signed_by_pinned_ca:
        return "the certificate is not signed by this fleet's certificate authority"
    binding = parse_key_id(cert.key_id)
    if binding is None:
        return "the certificate was not issued by fleetgate (unknown key id)"
    if binding.server_id != server_id:
        return "the certificate was issued for another server"
    if now < cert.valid_after:
        return f"the certificate is not valid before {_when(cert.valid_after)}"
    if now >= cert.valid_before:
        return f"the certificate expired at {_when(cert.valid_before)}"
    if username not in cert.principals:
        names = ", ".join(cert.principals) or "nobody"
        return f"the certificate is for {names}, not {username}"
    if work_session is not None and binding.work_session != work_session:
        return "the certificate belongs to another work session"
    return None
