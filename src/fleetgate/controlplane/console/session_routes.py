"""Console pages of one session: detail and actions, timeline, approvals, launch
(terminal, files, commands) and recordings. Every call goes through the API's functions."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError

from fleetgate.controlplane.api import (
    commands,
    recordings,
    websh,
    worksession_reads,
    worksessions,
)
from fleetgate.controlplane.api.command_checks import CommandCreateBody
from fleetgate.controlplane.api.worksession_bodies import ApproveBody, ExtendBody
from fleetgate.controlplane.auth import Principal
from fleetgate.controlplane.console.forms import FEATURES, PRESETS
from fleetgate.controlplane.console.web import (
    PREFIX,
    ConsoleError,
    ConsoleUser,
    api_json,
    csrf_form,
    page,
    redirect_with_message,
    services_of,
    sub_request,
)
from fleetgate.controlplane.errors import APIError
from fleetgate.controlplane.worksession.lifecycle import Action


__all__ = ["router"]

router = APIRouter(prefix=PREFIX, include_in_schema=False)

ACTIONS = {
    a.value: a
    for a in (Action.REJECT, Action.CANCEL, Action.ACTIVATE, Action.COMPLETE, Action.REVOKE)
}


async def _session(request: Request, principal: Principal, session_id: str) -> dict[str, Any]:
    """The session as the API shows it to ``principal`` (404 page when it may not)."""
    try:
        answer = await worksession_reads.detail(
            session_id, sub_request(request), principal, services_of(request)
        )
    except APIError as exc:
        raise ConsoleError(exc.status, exc.detail) from None
    return dict(api_json(answer))


async def _terminals(request: Request, principal: Principal, session_id: str) -> list[Any]:
    query: dict[str, str | int] = {"work_session": session_id, "page_size": 100}
    listing = await websh.list_terminals(
        sub_request(request, query), principal, services_of(request)
    )
    return list(listing["results"])


@router.get("/sessions/{session_id}", response_class=HTMLResponse)
async def detail(session_id: str, request: Request, principal: ConsoleUser) -> Response:
    """State, purpose, servers, features, people, times, actions, timeline, recordings."""
    session = await _session(request, principal, session_id)
    context = {
        "s": session,
        "approver": await _approver(request, principal, session),
        "terminals": await _terminals(request, principal, session["id"]),
        "features": FEATURES,
        "presets": PRESETS,
    }
    return page(request, "detail.html", context, principal=principal)


async def _timeline_pages(
    request: Request, principal: Principal, session_id: str
) -> AsyncGenerator[dict[str, Any], None]:
    """Every timeline item, oldest first, read in pages of the API's largest size (at
    most 5,000 items)."""
    services = services_of(request)
    for page_number in range(1, 51):
        query = {"page": page_number, "page_size": 100}
        answer = api_json(
            await worksession_reads.timeline(
                session_id, sub_request(request, query), principal, services
            )
        )
        for item in answer["results"]:
            yield item
        if not answer.get("next"):
            return


async def _approver(request: Request, principal: Principal, session: dict[str, Any]) -> str | None:
    """Who approved the session: the actor of its one ``pending -> approved`` change."""
    if session["status"] in ("pending", "rejected", "cancelled"):
        return None
    # A session is approved once, early: its first page of the timeline almost always has it.
    async with aclosing(_timeline_pages(request, principal, session["id"])) as items:
        async for item in items:
            if item["type"] == "status_change" and item.get("to") == "approved":
                return str(item["actor"]) if item["actor"] else None
    return None


@router.get("/sessions/{session_id}/timeline", response_class=HTMLResponse)
async def timeline(session_id: str, request: Request, principal: ConsoleUser) -> Response:
    """The timeline as an HTML fragment (the detail page refreshes it)."""
    session = await _session(request, principal, session_id)
    items = [item async for item in _timeline_pages(request, principal, session["id"])]
    servers = {s["id"]: s["name"] for s in session["servers"]}
    context = {"items": items, "server_names": servers, "s": session}
    return page(request, "timeline.html", context, principal=principal)


@router.post("/sessions/{session_id}/act")
async def act(session_id: str, request: Request, principal: ConsoleUser) -> Response:
    """Cancel, activate, complete, extend, approve (with adjustments), reject, revoke."""
    form = await csrf_form(request)
    name = str(form.get("action", ""))
    services = services_of(request)
    try:
        if name == "approve":
            adjust = form.get("adjust") == "1"
            body = ApproveBody(
                scopes=[str(v) for v in form.getlist("scopes")] if adjust else None,
                servers=[str(v) for v in form.getlist("servers")] if adjust else None,
            )
            await worksessions.approve(session_id, principal, services, body)
        elif name == "extend":
            extend = ExtendBody(duration=str(form.get("duration", "1h")))
            await worksessions.extend(session_id, extend, principal, services)
        elif name in ACTIONS:
            await worksessions.SIMPLE_ACTIONS[ACTIONS[name]](session_id, principal, services)
        else:
            raise ConsoleError(400, f"Unknown action {name[:40]!r}.")
        message = f"Done: {name}."
    except APIError as exc:
        if exc.status == 404:
            raise ConsoleError(404, exc.detail) from None
        message = f"Refused: {exc.detail}"
    except ValidationError:
        message = "Refused: invalid values."
    target = str(form.get("back", "")) or f"{PREFIX}/sessions/{session_id}"
    if not target.startswith(f"{PREFIX}/"):
        target = f"{PREFIX}/sessions/{session_id}"
    return redirect_with_message(request, target, message)


@router.get("/approvals", response_class=HTMLResponse)
async def approvals(request: Request, principal: ConsoleUser) -> Response:
    """Pending requests (superusers), to approve or reject one or many at once."""
    if not principal.is_superuser:
        raise ConsoleError(403, "Only a superuser reviews requests.")
    query: dict[str, str | int] = {"status": "pending", "page_size": 100}
    listing = api_json(
        await worksession_reads.list_sessions(
            sub_request(request, query), principal, services_of(request)
        )
    )
    return page(request, "approvals.html", {"listing": listing}, principal=principal)


@router.post("/approvals")
async def decide(request: Request, principal: ConsoleUser) -> Response:
    """Approve or reject every selected request; each goes through the API on its own."""
    form = await csrf_form(request)
    name = str(form.get("action", ""))
    if name not in ("approve", "reject"):
        raise ConsoleError(400, "Choose approve or reject.")
    services = services_of(request)
    done, refused = 0, []
    for session_id in [str(v) for v in form.getlist("ids")][:100]:
        try:
            if name == "approve":
                await worksessions.approve(session_id, principal, services, None)
            else:
                await worksessions.SIMPLE_ACTIONS[Action.REJECT](session_id, principal, services)
            done += 1
        except APIError as exc:
            refused.append(exc.detail)
    verb = "Approved" if name == "approve" else "Rejected"
    message = f"{verb} {done}." + (f" Refused: {'; '.join(refused)}" if refused else "")
    return redirect_with_message(request, f"{PREFIX}/approvals", message)


@router.get("/sessions/{session_id}/launch", response_class=HTMLResponse)
async def launch(session_id: str, request: Request, principal: ConsoleUser) -> Response:
    """Terminal, file transfer and commands on one of an active session's servers."""
    session = await _session(request, principal, session_id)
    wanted = request.query_params.get("server")
    server = next((s for s in session["servers"] if wanted in (s["id"], s["name"])), None)
    server = server or (session["servers"][0] if session["servers"] else None)
    # The account the API will run things as: a user's own mapped server account; a
    # superuser may name any (root by default), as in the API (authz.server_account).
    user = principal.user
    mapped = None if user is None else user.server_username
    context = {
        "s": session,
        "server": server,
        "account": mapped or ("root" if principal.is_superuser else ""),
    }
    return page(request, "launch.html", context, principal=principal)


@router.post("/sessions/{session_id}/terminals")
async def create_terminal(session_id: str, request: Request, principal: ConsoleUser) -> Response:
    """Create a terminal in the session (the page then attaches to its websocket)."""
    form = await csrf_form(request)
    try:
        body = websh.TerminalCreateBody(
            server=str(form.get("server", "")),
            username=str(form.get("username", "")),
            rows=int(str(form.get("rows", "24"))),
            cols=int(str(form.get("cols", "80"))),
            work_session=session_id,
        )
        created = await websh.create_terminal(
            body, sub_request(request), principal, services_of(request)
        )
    except (ValidationError, ValueError):
        return JSONResponse({"code": "INVALID_REQUEST", "detail": "invalid terminal"}, 400)
    except APIError as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    return JSONResponse({"id": created["id"], "websocket": created["websocket"]}, 201)


@router.post("/sessions/{session_id}/commands")
async def run_command(session_id: str, request: Request, principal: ConsoleUser) -> Response:
    """Run a command in the session; the answer is the API's NDJSON stream."""
    form = await csrf_form(request)
    try:
        body = CommandCreateBody(
            server=str(form.get("server", "")),
            line=str(form.get("line", "")),
            username=str(form.get("username", "")) or None,
            work_session=session_id,
        )
        return await commands.create_command(
            body, sub_request(request, {"stream": "true"}), principal, services_of(request)
        )
    except ValidationError:
        return JSONResponse({"code": "INVALID_REQUEST", "detail": "invalid command"}, 400)
    except APIError as exc:
        return JSONResponse(exc.body(), status_code=exc.status)


@router.get("/terminals/{terminal_id}/recording")
async def recording(terminal_id: str, request: Request, principal: ConsoleUser) -> Response:
    """A terminal's asciicast, for the player (the API's download, with the cookie)."""
    try:
        return await recordings.download(terminal_id, principal, services_of(request))
    except APIError as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
