"""``/api/servers/servers/``: register, list, detail, delete.

``/api/servers/servers/-/`` is the calling agent's own server, authenticated by the
agent's ``Authorization: id=..., key=...`` header (``fleetgate-agent register`` checks its stored
identity with it; ``fleetgate-agent unregister`` deletes itself with it). ``-`` cannot be a server
name, so it never shadows one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fleetgate.controlplane.api.deps import PrincipalDep, ServicesDep, SuperuserDep
from fleetgate.controlplane.api.pagination import page_response
from fleetgate.controlplane.api.params import parse_bool, parse_page
from fleetgate.controlplane.api.serializers import server_json
from fleetgate.controlplane.auth import parse_agent_authorization
from fleetgate.controlplane.errors import APIError, authentication_failed, server_not_found
from fleetgate.controlplane.store import servers as servers_store, ssh as ssh_store
from fleetgate.controlplane.timeutil import now_us


__all__ = ["SERVER_NAME_PATTERN", "router"]

router = APIRouter(prefix="/api/servers/servers")

SERVER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$"


class RegisterBody(BaseModel):
    """``POST /api/servers/servers/register/``."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=SERVER_NAME_PATTERN)
    hostname: str = Field(default="", max_length=255)
    platform: str = Field(default="", max_length=255)
    ssh_host_key: str | None = Field(default=None, max_length=1024)
    """The agent's SSH host public key (OpenSSH line); also sent in every ``hello``."""


@router.post("/register/", status_code=201)
async def register(
    body: RegisterBody, principal: SuperuserDep, services: ServicesDep
) -> JSONResponse:
    """Register a server; the response holds the agent's key (shown only here)."""
    created = await services.db.write(
        servers_store.register_server,
        body.name,
        hostname=body.hostname,
        platform=body.platform,
        now=now_us(),
    )
    if created is None:
        raise APIError(
            409, "SERVER_ALREADY_REGISTERED", f"A server named {body.name!r} exists.", "name"
        )
    server, key = created
    if body.ssh_host_key:
        await services.db.write(ssh_store.set_host_key, server.id, body.ssh_host_key)
    answer = {
        "id": server.id,
        "name": server.name,
        "key": key,
        "signing_public_key": services.signer.public_key_b64,
        "ssh_ca_public_key": None if services.ssh_ca is None else services.ssh_ca.public_line,
    }
    return JSONResponse(answer, status_code=201)


async def agent_server(request: Request, services: ServicesDep) -> servers_store.ServerRow:
    """The server whose agent credentials are in ``Authorization``; 401 otherwise."""
    creds = parse_agent_authorization(request.headers.get("authorization"))
    server = None if creds is None else await services.db.read(servers_store.authenticate, *creds)
    if server is None:
        raise authentication_failed("unknown server id or wrong key")
    return server


AgentServerDep = Annotated[servers_store.ServerRow, Depends(agent_server)]


@router.get("/-/")
async def get_own_server(server: AgentServerDep, services: ServicesDep) -> JSONResponse:
    """The calling agent's server."""
    return JSONResponse(server_json(server, services.hub.connection(server.id)))


@router.delete("/-/", status_code=204)
async def delete_own_server(server: AgentServerDep, services: ServicesDep) -> Response:
    """An agent unregisters itself: like the superuser delete, with its own credentials."""
    return await _delete(server, services)


@router.get("/")
async def list_servers(
    request: Request, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """A page of servers, by name."""
    params = request.query_params
    page = parse_page(params)
    count, rows = await services.db.read(
        servers_store.list_servers,
        name=params.get("name") or None,
        is_connected=parse_bool(params, "is_connected"),
        offset=page.offset,
        limit=page.size,
    )
    hub = services.hub
    results = [server_json(r, hub.connection(r.id)) for r in rows]
    return JSONResponse(page_response(request, services.settings.public_url, page, count, results))


@router.get("/{ref}/")
async def get_server(ref: str, principal: PrincipalDep, services: ServicesDep) -> JSONResponse:
    """One server, by id or name."""
    server = await services.db.read(servers_store.get_server, ref)
    if server is None:
        raise server_not_found(ref)
    return JSONResponse(server_json(server, services.hub.connection(server.id)))


@router.delete("/{ref}/", status_code=204)
async def delete_server(ref: str, principal: SuperuserDep, services: ServicesDep) -> Response:
    """Delete a server and its commands; its agent is disconnected and refused from now."""
    server = await services.db.read(servers_store.get_server, ref)
    if server is None:
        raise server_not_found(ref)
    return await _delete(server, services)


async def _delete(server: servers_store.ServerRow, services: ServicesDep) -> Response:
    if not await services.db.write(servers_store.delete_server, server.id):
        raise server_not_found(server.id)
    services.server_refs.clear()
    await services.hub.disconnect(server.id)
    return Response(status_code=204)
