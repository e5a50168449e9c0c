"""FastAPI dependencies: the application's services and the caller's principal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, cast

from fastapi import Depends, Request

from fleetgate.controlplane.auth import Principal, PrincipalCache, resolve_principal
from fleetgate.controlplane.authz import check_rule, rule_for
from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.controlplane.errors import authentication_failed, permission_denied, server_not_found
from fleetgate.controlplane.grants import GrantSigner
from fleetgate.controlplane.hub import Hub
from fleetgate.controlplane.hub.worksessions import WorkSessionClock
from fleetgate.controlplane.sshca import SshAuthority
from fleetgate.controlplane.store import Database, servers as servers_store
from fleetgate.controlplane.timeutil import now_us


__all__ = [
    "PrincipalDep",
    "ServerRefCache",
    "Services",
    "ServicesDep",
    "SuperuserDep",
    "get_principal",
    "get_services",
    "require_superuser",
    "resolve_server",
]


@dataclass(frozen=True)
class Services:
    """What the routes need, created by the app's lifespan (``app.state.services``)."""

    settings: ControlPlaneSettings
    db: Database
    hub: Hub
    work_sessions: WorkSessionClock
    signer: GrantSigner
    ssh_ca: SshAuthority | None = None
    """The SSH certificate authority (``None``: SSH access is not offered)."""
    principals: PrincipalCache = field(default_factory=PrincipalCache)
    server_refs: ServerRefCache = field(default_factory=lambda: ServerRefCache())


class ServerRefCache:
    """``id or name -> (id, name)`` of servers, so a command create needs no lookup.

    Ids and names never change; deleting a server clears the cache.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, tuple[str, str]] = {}

    def get(self, ref: str) -> tuple[str, str] | None:
        """The cached ``(id, name)`` of ``ref``."""
        return self._entries.get(ref)

    def put(self, ref: str, server_id: str, name: str) -> None:
        """Remember a lookup (the whole cache is dropped when it is full)."""
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[ref] = (server_id, name)

    def clear(self) -> None:
        """Forget everything (a server was deleted)."""
        self._entries.clear()


async def get_services(request: Request) -> Services:
    """The application's services (async: FastAPI runs sync dependencies in a thread)."""
    return cast(Services, request.app.state.services)


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_principal(request: Request) -> Principal:
    """The authenticated caller, allowed by the route's rule (``authz.RULES``).

    Raises:
        APIError: 401 ``AUTHENTICATION_FAILED``; 403 when the rule refuses the caller.
    """
    header = request.headers.get("authorization")
    if not header:
        raise authentication_failed("Authentication credentials were not provided.")
    services = cast(Services, request.app.state.services)
    principal = await resolve_principal(
        services.db, header, now=now_us(), cache=services.principals
    )
    if principal is None:
        raise authentication_failed()
    route = getattr(request.scope.get("route"), "path", request.url.path)
    check_rule(rule_for(request.method, route), principal, route=route)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_superuser(principal: PrincipalDep) -> Principal:
    """The caller, who must be a superuser; 403 ``PERMISSION_DENIED`` otherwise."""
    if not principal.is_superuser:
        raise permission_denied()
    return principal


SuperuserDep = Annotated[Principal, Depends(require_superuser)]


async def resolve_server(services: Services, ref: str) -> tuple[str, str]:
    """``(id, name)`` of the server named or identified by ``ref``.

    Raises:
        APIError: 404 when there is no such server.
    """
    cached = services.server_refs.get(ref)
    if cached is not None:
        return cached
    server = await services.db.read(servers_store.get_server, ref)
    if server is None:
        raise server_not_found(ref)
    services.server_refs.put(ref, server.id, server.name)
    return server.id, server.name
