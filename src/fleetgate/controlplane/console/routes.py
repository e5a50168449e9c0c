"""Console pages: login, sessions, servers, the request form and its preview.

Each handler calls the function behind the matching API route with the login cookie's
principal (see :mod:`.web`), so the API's authorization applies unchanged.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from fleetgate.controlplane.api import identity, servers, worksession_reads, worksessions
from fleetgate.controlplane.api.worksession_bodies import MAX_DESCRIPTION, CreateBody
from fleetgate.controlplane.auth import Principal
from fleetgate.controlplane.console.cookies import LOGIN_COOKIE, new_csrf_token
from fleetgate.controlplane.console.forms import (
    FEATURES,
    OWNER_ENABLED,
    PRESETS,
    FormError,
    RequestForm,
    max_label,
    parse_request_form,
)
from fleetgate.controlplane.console.markdown import render_markdown
from fleetgate.controlplane.console.web import (
    PREFIX,
    ConsoleUser,
    api_json,
    csrf_form,
    page,
    redirect_with_message,
    served_over_https,
    services_of,
    set_csrf_cookie,
    sub_request,
)
from fleetgate.controlplane.errors import APIError
from fleetgate.controlplane.worksession.lifecycle import Status


__all__ = ["router"]

router = APIRouter(prefix=PREFIX, include_in_schema=False)

log = structlog.get_logger("fleetgate.controlplane.console")

STATUS_FILTERS = ("all", *(s.value for s in Status))


def _safe_next(target: str | None) -> str:
    """Only a path of this console: never another site (an open redirect)."""
    if target and target.startswith(f"{PREFIX}/") and not target.startswith("//"):
        return target
    return f"{PREFIX}/sessions"


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> Response:
    """The login form."""
    return page(request, "login.html", {"next": _safe_next(request.query_params.get("next"))})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Check the password through the API's login and keep its token in the cookie."""
    form = await csrf_form(request)
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    target = _safe_next(str(form.get("next", "")))
    services = services_of(request)
    try:
        body = identity.LoginBody(username=username, password=password)
        answer = api_json(await identity.login(body, services))
    except (ValidationError, APIError):
        log.info("console.login_failed", username=username[:150])
        context = {"next": target, "error": "Wrong username or password.", "username": username}
        return page(request, "login.html", context, status=401)
    log.info("console.login", username=username)
    response = RedirectResponse(target, status_code=303)
    # A new CSRF token with the new login: one planted before it does not carry over.
    request.state.csrf = new_csrf_token()
    set_csrf_cookie(request, response)
    response.set_cookie(
        LOGIN_COOKIE,
        answer["token"],
        max_age=int(services.settings.login_token_ttl),
        httponly=True,
        samesite="strict",
        secure=served_over_https(request),
        path="/",
    )
    return response


@router.post("/logout")
async def logout(request: Request, principal: ConsoleUser) -> Response:
    """Delete the login token (through the API) and the cookie."""
    await csrf_form(request)
    await identity.delete_token(principal.token.id, request, principal, services_of(request))
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@router.get("/sessions", response_class=HTMLResponse)
async def sessions(request: Request, principal: ConsoleUser) -> Response:
    """My sessions (a superuser: everyone's), with status filter, search and pages."""
    params = request.query_params
    status = params.get("status") or "all"
    if status not in STATUS_FILTERS:
        status = "all"
    query = {"status": status, "q": params.get("q", "")[:256], "page": params.get("page", "1")}
    services = services_of(request)
    try:
        listing = api_json(
            await worksession_reads.list_sessions(sub_request(request, query), principal, services)
        )
    except APIError:
        query["page"] = "1"
        listing = api_json(
            await worksession_reads.list_sessions(sub_request(request, query), principal, services)
        )
    connected = await _connected_servers(request, principal)
    context = {
        "listing": listing,
        "status": status,
        "q": query["q"],
        "page_number": int(query["page"]) if query["page"].isdigit() else 1,
        "filters": STATUS_FILTERS,
        "servers": connected,
    }
    return page(request, "sessions.html", context, principal=principal)


async def _servers(request: Request, principal: Principal, **query: str) -> list[dict[str, Any]]:
    listing = api_json(
        await servers.list_servers(
            sub_request(request, {"page_size": 100, **query}), principal, services_of(request)
        )
    )
    return list(listing["results"])


async def _connected_servers(request: Request, principal: Principal) -> list[dict[str, Any]]:
    return [s for s in await _servers(request, principal) if s["is_connected"]]


@router.get("/servers", response_class=HTMLResponse)
async def server_cards(request: Request, principal: ConsoleUser) -> Response:
    """Every registered server as a card; Connect opens the form with it selected."""
    context = {"servers": await _servers(request, principal)}
    return page(request, "servers.html", context, principal=principal)


def _form_context(
    request: Request,
    principal: Principal,
    form: RequestForm,
    connected: list[dict[str, Any]],
    error: FormError | None = None,
) -> dict[str, Any]:
    max_seconds = int(services_of(request).settings.work_session_max_duration)
    return {
        "form": form,
        "servers": connected,
        "features": FEATURES,
        "owner_enabled": OWNER_ENABLED,
        "presets": PRESETS,
        "max_seconds": max_seconds,
        "max_label": max_label(max_seconds),
        "max_purpose": MAX_DESCRIPTION,
        "error": error,
        "can_assign": principal.is_superuser,
    }


@router.get("/sessions/new", response_class=HTMLResponse)
async def new_session(request: Request, principal: ConsoleUser) -> Response:
    """The request form (``?server=<id>``: pre-selected, from a Connect button)."""
    connected = await _connected_servers(request, principal)
    form = RequestForm()
    wanted = request.query_params.get("server")
    form.servers = [s["id"] for s in connected if wanted in (s["id"], s["name"])]
    context = _form_context(request, principal, form, connected)
    return page(request, "request.html", context, principal=principal)


@router.post("/sessions/new", response_class=HTMLResponse)
async def request_session(request: Request, principal: ConsoleUser) -> Response:
    """Submit the form: the API creates the session; then its detail page (pending)."""
    submitted = await csrf_form(request)
    values = {k: v for k, v in submitted.items() if isinstance(v, str)}
    lists = {k: [v for v in submitted.getlist(k) if isinstance(v, str)] for k in submitted}
    services = services_of(request)
    max_seconds = int(services.settings.work_session_max_duration)
    connected = await _connected_servers(request, principal)
    try:
        _form, body = parse_request_form(values, lists, max_seconds=max_seconds)
        created = await worksessions.create(CreateBody.model_validate(body), principal, services)
    except FormError as exc:
        return _form_again(request, principal, values, lists, connected, exc)
    except ValidationError as exc:
        first = exc.errors()[0]
        problem = FormError(str(first["loc"][0]), f"{first['loc'][0]}: {first['msg']}")
        return _form_again(request, principal, values, lists, connected, problem)
    except APIError as exc:
        problem = FormError(exc.source or "", exc.detail)
        return _form_again(request, principal, values, lists, connected, problem)
    session_id = api_json(created)["id"]
    return redirect_with_message(request, f"{PREFIX}/sessions/{session_id}", "Session requested.")


def _form_again(
    request: Request,
    principal: Principal,
    values: dict[str, str],
    lists: dict[str, list[str]],
    connected: list[dict[str, Any]],
    error: FormError,
) -> Response:
    form = RequestForm(
        purpose=values.get("purpose", ""),
        servers=lists.get("servers", []),
        scopes=lists.get("scopes", []),
        assignee=values.get("assignee", ""),
        mode=values.get("mode", "preset"),
        preset=values.get("preset", "1h"),
        start=values.get("start", "now"),
        starts_at=values.get("starts_at", ""),
        sudo=values.get("sudo", ""),
    )
    for name in ("hours", "minutes"):
        raw = values.get(name, "")
        if raw.isdigit() and len(raw) < 6:
            setattr(form, name, int(raw))
    context = _form_context(request, principal, form, connected, error)
    return page(request, "request.html", context, principal=principal, status=400)


@router.post("/preview", response_class=HTMLResponse)
async def preview(request: Request, principal: ConsoleUser) -> Response:
    """The purpose rendered as the detail page will show it (safe HTML)."""
    form = await csrf_form(request)
    text = str(form.get("purpose", ""))[: MAX_DESCRIPTION * 2]
    return HTMLResponse(render_markdown(text), headers={"Cache-Control": "no-store"})
