"""The console's browser credentials: the login cookie and the CSRF token. Pure functions.

The login cookie holds a ``login`` token (the same gated principal as ``POST
/api/auth/login/``), HttpOnly and SameSite=Strict, so page scripts never see it and no
other site's request carries it. State changes also need the CSRF token (double submit:
a random cookie whose value must come back in the form field ``csrf`` or the header
``X-CSRF-Token``). Websockets cannot carry a header from a browser, so the channel routes
accept the login cookie too, but only from a same-origin page (``Origin`` = the host).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from urllib.parse import urlsplit


__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "LOGIN_COOKIE",
    "csrf_ok",
    "new_csrf_token",
    "same_origin",
    "websocket_authorization",
]

LOGIN_COOKIE = "fleetgate_login"
CSRF_COOKIE = "fleetgate_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


def new_csrf_token() -> str:
    """A fresh random CSRF token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)


def csrf_ok(cookie: str | None, submitted: str | None) -> bool:
    """Whether the submitted token is present and equals the cookie's (constant time)."""
    if not cookie or not submitted or len(cookie) > 256 or len(submitted) > 256:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether ``Origin`` names the host the request was sent to (scheme aside)."""
    if not origin or not host:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def websocket_authorization(headers: Mapping[str, str], cookies: Mapping[str, str]) -> str | None:
    """An ``Authorization`` value for a browser's websocket: its login cookie, if the
    handshake comes from a page of this same origin (``None`` otherwise)."""
    key = cookies.get(LOGIN_COOKIE)
    if not key or not same_origin(headers.get("origin"), headers.get("host")):
        return None
    return f"Bearer {key}"
