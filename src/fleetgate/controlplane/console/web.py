"""What every console route shares: the caller from the login cookie, the CSRF check,
calls into the API's own route functions, and page rendering.

The console holds no authorization rules of its own: each page calls the function behind
the matching API route with the principal of the login cookie, so a user sees and does in
the console exactly what the API lets the same login do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, cast
from urllib.parse import quote, unquote, urlencode

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from fleetgate.controlplane.api.deps import Services
from fleetgate.controlplane.auth import Principal, resolve_principal
from fleetgate.controlplane.console.cookies import (
    CSRF_COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    csrf_ok,
    new_csrf_token,
    same_origin,
)
from fleetgate.controlplane.console.markdown import plain_text, render_markdown
from fleetgate.controlplane.errors import APIError
from fleetgate.controlplane.timeutil import now_us


__all__ = [
    "PREFIX",
    "ConsoleError",
    "ConsoleUser",
    "LoginRequired",
    "api_json",
    "console_user",
    "csrf_form",
    "page",
    "redirect_with_message",
    "served_over_https",
    "services_of",
    "set_csrf_cookie",
    "sub_request",
    "templates",
]

PREFIX = "/console"
STATIC = Path(__file__).parent / "static"

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def _when(value: str | None) -> str:
    """An API time (ISO 8601, UTC) as ``2026-12-02 10:49 UTC``."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return moment.strftime("%Y-%m-%d %H:%M UTC")


templates.env.filters["when"] = _when
templates.env.filters["markdown"] = render_markdown
templates.env.filters["plain"] = plain_text
templates.env.globals["prefix"] = PREFIX


class LoginRequired(Exception):
    """No valid login cookie: pages redirect to the login form, fragments answer 401."""


class ConsoleError(Exception):
    """A refusal shown as a page (or a fragment) with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def services_of(request: Request) -> Services:
    """The application's services."""
    return cast(Services, request.app.state.services)


async def console_user(request: Request) -> Principal:
    """The principal of the login cookie; :class:`LoginRequired` without a valid one."""
    key = request.cookies.get(LOGIN_COOKIE)
    if not key:
        raise LoginRequired
    services = services_of(request)
    principal = await resolve_principal(
        services.db, f"Bearer {key}", now=now_us(), cache=services.principals
    )
    if principal is None or principal.user is None:
        raise LoginRequired
    return principal


ConsoleUser = Annotated[Principal, Depends(console_user)]


def csrf_token(request: Request) -> str:
    """The page's CSRF token: the cookie's, or a new one that :func:`page` sets."""
    token = request.cookies.get(CSRF_COOKIE)
    if token and 20 <= len(token) <= 256:
        return token
    cached = getattr(request.state, "csrf", None)
    if cached is None:
        cached = new_csrf_token()
        request.state.csrf = cached
    return str(cached)


async def csrf_form(request: Request) -> FormData:
    """The request's form after the CSRF check (field or header must equal the cookie,
    and a browser's ``Origin``, when sent, must be this site).

    Raises:
        ConsoleError: 403 when the token is missing or wrong.
    """
    origin = request.headers.get("origin")
    if origin is not None and origin != "null" and not same_origin(origin, request.url.netloc):
        raise ConsoleError(403, "Cross-site request refused.")
    form = await request.form()
    submitted = request.headers.get(CSRF_HEADER)
    if submitted is None:
        value = form.get(CSRF_FIELD)
        submitted = value if isinstance(value, str) else None
    if not csrf_ok(request.cookies.get(CSRF_COOKIE), submitted):
        raise ConsoleError(403, "CSRF token missing or invalid: reload the page and try again.")
    return form


def served_over_https(request: Request) -> bool:
    """Whether browsers reach the console over https (directly, or behind a proxy that the
    ``public_url`` setting names): its cookies are then ``Secure``."""
    public_url = services_of(request).settings.public_url or ""
    return request.url.scheme == "https" or public_url.startswith("https://")


def set_csrf_cookie(request: Request, response: Response) -> None:
    """Send the CSRF cookie if this request made a new token."""
    fresh = getattr(request.state, "csrf", None)
    if fresh is not None:
        response.set_cookie(
            CSRF_COOKIE,
            str(fresh),
            httponly=True,
            samesite="strict",
            secure=served_over_https(request),
            path="/",
        )


FLASH_COOKIE = "fleetgate_flash"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    # Scripts only from our own static files: an injected tag could not run (the player's
    # terminal emulator is WebAssembly, hence wasm-unsafe-eval; no JavaScript eval). Inline
    # styles stay allowed (xterm.js and the player size their elements with them).
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",  # no clickjacking of the approve buttons
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def redirect_with_message(request: Request, target: str, message: str) -> Response:
    """303 to ``target``, whose page then shows ``message`` once (a short-lived cookie,
    not the query string, so a link cannot make the console say something)."""
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        FLASH_COOKIE,
        quote(message[:300]),
        max_age=60,
        httponly=True,
        samesite="strict",
        secure=served_over_https(request),
        path="/",
    )
    return response


def page(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    principal: Principal | None = None,
    status: int = 200,
) -> HTMLResponse:
    """Render a page with the layout's context (user, CSRF token, flash message)."""
    full = {
        "user": None if principal is None else principal.user,
        "is_superuser": principal is not None and principal.is_superuser,
        "csrf": csrf_token(request),
        "flash": unquote(request.cookies.get(FLASH_COOKIE, ""))[:300],
        **context,
    }
    response = templates.TemplateResponse(request, template, full, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    set_csrf_cookie(request, response)
    if FLASH_COOKIE in request.cookies:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def sub_request(request: Request, query: Mapping[str, str | int] | None = None) -> Request:
    """``request`` with another query string, for an API function that reads its own."""
    scope = dict(request.scope)
    scope["query_string"] = urlencode({k: str(v) for k, v in (query or {}).items()}).encode()
    return Request(scope, receive=request.receive)


def api_json(response: Response) -> Any:
    """The body of an API route's JSON response."""
    return json.loads(bytes(response.body))


def login_redirect_target(request: Request) -> str:
    """Where the login form sends the browser back to."""
    path = request.url.path
    if request.url.query:
        path += "?" + request.url.query
    return f"{PREFIX}/login?next={quote(path)}"


def api_error_message(exc: APIError) -> str:
    """An API refusal in words for a page."""
    return exc.detail
