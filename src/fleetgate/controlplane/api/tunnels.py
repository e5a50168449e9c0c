"""Tunnels: ``/api/tunnels/`` (the resource) and ``/ws/tunnels/<id>/streams/`` (its streams).

A tunnel is created once (gate: scope ``tunnel``, the server, the work session) and then
carries any number of TCP streams, each one channel to the agent, checked on its own, with
a grant that carries the session's expiry (the tunnel's, signed once while its claims stay
the same, for an agent that takes one: ``hello.tunnel_grants``). The target is always the server's loopback: a
``remote_host`` that is not loopback is refused here, and again by the agent. The
streams' route is ``api.tunnelstreams``' (its router is named here as well).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fleetgate.controlplane.acl import AclRefusal
from fleetgate.controlplane.api.channels import (
    authorize,
)
from fleetgate.controlplane.api.deps import PrincipalDep, Services, ServicesDep
from fleetgate.controlplane.api.pagination import page_response
from fleetgate.controlplane.api.params import parse_bool, parse_page
from fleetgate.controlplane.api.tunnelstreams import (
    SCOPE,
    STREAM_PATH,
    load_tunnel,
    streams_of,
)
from fleetgate.controlplane.authz import acl_refused
from fleetgate.controlplane.errors import APIError
from fleetgate.controlplane.hub.tunnels import TunnelStreams, stream_spec
from fleetgate.controlplane.store import tunnels as tunnels_store
from fleetgate.controlplane.store.tunnels import NewTunnel, TunnelRow
from fleetgate.controlplane.timeutil import iso, iso_or_none, now_us
from fleetgate.shared.addresses import loopback_address
from fleetgate.shared.protocol import content_digest


__all__ = ["install", "router"]

router = APIRouter(prefix="/api/tunnels")


class CreateBody(BaseModel):
    """``POST /api/tunnels/``."""

    model_config = ConfigDict(extra="forbid")
    server: str = Field(min_length=1, max_length=255)
    remote_port: int = Field(ge=1, le=65535)
    remote_host: str = Field(default="127.0.0.1", min_length=1, max_length=255)
    work_session: str | None = Field(default=None, max_length=64)


def install(services: Services) -> TunnelStreams:
    """The tunnels in use and their streams (called at start)."""
    return TunnelStreams(services.db, services.hub.channels.open)


def tunnel_json(tunnel: TunnelRow, streams: int) -> dict[str, Any]:
    """The API representation of a tunnel."""
    return {
        "id": tunnel.id,
        "server": tunnel.server_id,
        "server_name": tunnel.server_name,
        "remote_host": tunnel.remote_host,
        "remote_port": tunnel.remote_port,
        "owner": tunnel.owner_name,
        "work_session": tunnel.work_session_id,
        "created_at": iso(tunnel.created_at),
        "closed_at": iso_or_none(tunnel.closed_at),
        "close_code": tunnel.close_code,
        "close_reason": tunnel.close_reason,
        "streams": streams,
        "streams_url": STREAM_PATH.format(tunnel_id=tunnel.id),
    }


@router.post("/", status_code=201)
async def create(
    body: CreateBody, request: Request, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """Open a tunnel to ``remote_host:remote_port`` (loopback only) on ``server``."""
    host = loopback_address(body.remote_host)
    if host is None:
        raise APIError(
            400,
            "tunnel_target_not_allowed",
            f"tunnels only reach the server's own loopback; {body.remote_host[:100]!r} is "
            "not a loopback address",
            "remote_host",
        )
    if principal.acl is not None:
        try:
            principal.acl.check_port(body.remote_port)
        except AclRefusal as exc:
            raise acl_refused(exc.detail, "remote_port") from None
    tunnel_id = str(uuid.uuid4())
    requested = body.work_session or request.headers.get("x-work-session") or None
    allowed = await authorize(
        services,
        principal,
        server=body.server,
        scope=SCOPE,
        work_session=requested,
        operation_id=tunnel_id,
        description=f"tunnel to {host}:{body.remote_port}",
        content=content_digest(stream_spec(tunnel_id, host, body.remote_port)),
    )
    new = NewTunnel(
        id=tunnel_id,
        server_id=allowed.server_id,
        remote_host=host,
        remote_port=body.remote_port,
        owner_user=principal.user_id,
        owner_token=principal.token.id,
        work_session_id=allowed.work_session_id,
        created_at=now_us(),
    )
    await services.db.write(tunnels_store.insert_tunnel, new)
    row = await streams_of(request.app.state).row(tunnel_id)
    assert row is not None
    return JSONResponse(tunnel_json(row, 0), status_code=201)


@router.get("/")
async def list_tunnels(
    request: Request, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """A page of the caller's tunnels (a superuser's: everyone's), newest first."""
    params = request.query_params
    page = parse_page(params)
    open_only = parse_bool(params, "open") or False
    everyone = principal.is_superuser
    count, rows = await services.db.read(
        tunnels_store.list_tunnels,
        owner_user=None if everyone else principal.user_id,
        owner_token=None if everyone else principal.token.id,
        open_only=open_only,
        offset=page.offset,
        limit=page.size,
    )
    streams = streams_of(request.app.state)
    results = [tunnel_json(r, streams.count(r.id)) for r in rows]
    return JSONResponse(page_response(request, services.settings.public_url, page, count, results))


@router.get("/{tunnel_id}/")
async def detail(
    tunnel_id: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """One tunnel, with how many streams it carries now."""
    streams = streams_of(request.app.state)
    row = await load_tunnel(tunnel_id, principal, streams)
    return JSONResponse(tunnel_json(row, streams.count(row.id)))


@router.delete("/{tunnel_id}/", status_code=204)
async def delete(
    tunnel_id: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> Response:
    """Close the tunnel: its open streams end, new ones are refused."""
    streams = streams_of(request.app.state)
    row = await load_tunnel(tunnel_id, principal, streams)
    if row.closed_at is None:
        await streams.close(row, "TUNNEL_CLOSED", "the tunnel was closed")
    return Response(status_code=204)
