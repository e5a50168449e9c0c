"""One readable line for a failed TLS handshake, whichever client library raised it.

The agent (websockets), agentctl (httpx, ``http.client``, websockets) and the SSH proxy
all reach the control plane over TLS; a refused certificate must read the same from each:
``certificate verify failed: <why>``, without OpenSSL's ``[SSL: ...]`` and ``(_ssl.c:NNN)``
decorations. Standard library only: the SSH proxy imports this on its fast path.
"""

from __future__ import annotations

import re
import ssl


__all__ = ["describe_tls_error", "find_tls_error"]

_DECORATIONS = re.compile(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\]\s*|\s*\(_ssl\.c:\d+\)$")


def find_tls_error(exc: BaseException) -> ssl.SSLError | None:
    """The :class:`ssl.SSLError` behind ``exc`` (itself, or along its cause/context chain).

    httpx wraps the handshake failure twice (``httpx.ConnectError`` from
    ``httpcore.ConnectError`` from the ``SSLError``); websockets and ``http.client`` raise
    it directly.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def describe_tls_error(exc: BaseException, ca_file: object = None) -> str | None:
    """``certificate verify failed: <reason> (...)`` for a TLS failure, else ``None``.

    ``ca_file`` (the configured CA bundle, or ``None`` for the system trust store) is named
    in a verification failure so that the reader knows what the certificate was checked
    against.
    """
    found = find_tls_error(exc)
    if found is None:
        return None
    against = f"ca_file {ca_file}" if ca_file is not None else "the system trust store"
    if isinstance(found, ssl.SSLCertVerificationError):
        reason = (found.verify_message or "").rstrip(".") or _strip(found)
        return f"certificate verify failed: {reason} (checked against {against})"
    return f"TLS handshake failed: {_strip(found)}"


def _strip(exc: ssl.SSLError) -> str:
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    return _DECORATIONS.sub("", text).strip() or type(exc).__name__
