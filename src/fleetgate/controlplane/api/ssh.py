"""SSH access: certificates (``/api/ssh/certificates/``), host keys (``/api/ssh/hosts/``)
and the connection websocket (``/ws/ssh/<server>/``) that ``agentctl ssh-proxy`` relays.

The gate of an SSH connection needs a work session covering the server with at least one
of the scopes SSH requests use (``websh``, ``command``, ``webftp``, ``tunnel``); each
request inside the connection is then checked by the agent against its own scope, and by
the certificate's extensions (``permit-pty`` only with ``websh``, port forwarding only
with ``tunnel``). API and service tokens are not gated (as for every channel).
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.websockets import WebSocket

from fleetgate.controlplane.api.channels import (
    deny,
    owner_of,
    serve_channel,
    services_of,
    websocket_principal,
)
from fleetgate.controlplane.api.deps import PrincipalDep, Services, ServicesDep, resolve_server
from fleetgate.controlplane.auth import Principal
from fleetgate.controlplane.authz import require_session_named, server_account
from fleetgate.controlplane.errors import APIError
from fleetgate.controlplane.grants import operation_claims
from fleetgate.controlplane.hub.channelregistry import OpenChannel
from fleetgate.controlplane.sshca import CertificateRequest
from fleetgate.controlplane.store import servers as servers_store, ssh as ssh_store
from fleetgate.controlplane.store.ssh import SshConnectionRow
from fleetgate.controlplane.store.worksession_gate import gate_and_record
from fleetgate.controlplane.store.worksessions import WorkSessionRow, load_settled
from fleetgate.controlplane.timeutil import iso, now_us
from fleetgate.controlplane.worksession.gate import GateDenial
from fleetgate.shared.protocol import ChannelOpen, SshSpec, content_digest
from fleetgate.shared.protocol.ssh import SSH_CHANNEL_SCOPES, format_key_id


__all__ = ["CLIENT_PATH", "router", "serve_client"]

router = APIRouter(prefix="/api/ssh")
CLIENT_PATH = "/ws/ssh/{server}/"
TOKEN_CERTIFICATE_SECONDS = 3600
"""Lifetime of a certificate issued to an API or service token (no work session)."""
USERNAME_PATTERN = r"^[a-z_][a-z0-9_.-]{0,31}\$?$"


class CertificateBody(BaseModel):
    """``POST /api/ssh/certificates/``."""

    model_config = ConfigDict(extra="forbid")
    server: str = Field(min_length=1, max_length=255)
    public_key: str = Field(min_length=16, max_length=16_384)
    username: str | None = Field(default=None, pattern=USERNAME_PATTERN)
    work_session: str | None = Field(default=None, max_length=64)


def _ssh_gate(
    conn: sqlalchemy.Connection,
    principal: Principal,
    *,
    requested: str | None,
    server_id: str,
    server_name: str,
    line: str,
    now: int,
) -> tuple[GateDenial | None, WorkSessionRow | None]:
    """The gate with "any SSH scope": the first one the session has is checked (so every
    other rule gives its usual answer), and the denial names all of them."""
    scopes: tuple[str, ...] = ()
    if requested:
        try:
            found = load_settled(conn, str(uuid.UUID(requested)), now=now)
        except ValueError:
            found = None
        scopes = () if found is None else found.scopes
    scope = next((s for s in SSH_CHANNEL_SCOPES if s in scopes), SSH_CHANNEL_SCOPES[0])
    denial, session = gate_and_record(
        conn,
        requested,
        user_id=principal.user_id,
        server_id=server_id,
        server_name=server_name,
        scope=scope,
        line=line,
        now=now,
    )
    if denial is not None and denial.code == "work_session_scope_not_allowed":
        denial = GateDenial(
            denial.code,
            f"work session {requested} has none of the scopes SSH uses "
            f"({', '.join(SSH_CHANNEL_SCOPES)})",
        )
    return denial, session


def _login_name(principal: Principal, requested: str | None) -> str:
    """The login a certificate or connection names: what every other operation runs as
    (``authz.server_account``): a gated user's own server account only; a superuser or an
    ungated token may name one (root by default), within a token ACL's ``users``."""
    return server_account(principal, requested or None, what="An SSH login")


@router.post("/certificates/", status_code=201)
async def issue_certificate(
    body: CertificateBody, request: Request, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """A short-lived OpenSSH user certificate for ``public_key`` on ``server``."""
    if services.ssh_ca is None:
        raise APIError(503, "SSH_UNAVAILABLE", "this control plane does not issue certificates")
    requested = body.work_session or request.headers.get("x-work-session") or None
    require_session_named(principal, requested, "ssh")  # first: the most useful refusal
    server_id, server_name = await resolve_server(services, body.server)
    login = _login_name(principal, body.username)
    now = now_us()
    session: WorkSessionRow | None = None
    if principal.gated:

        def check(conn: sqlalchemy.Connection) -> tuple[GateDenial | None, WorkSessionRow | None]:
            return _ssh_gate(
                conn,
                principal,
                requested=requested,
                server_id=server_id,
                server_name=server_name,
                line=f"ssh certificate for {login}",
                now=now,
            )

        denial, session = await services.db.write(check)
        if denial is not None:
            raise APIError(403, denial.code, denial.detail, "work_session")
    if session is None:
        valid_before = now // 1_000_000 + TOKEN_CERTIFICATE_SECONDS
        scopes: tuple[str, ...] = SSH_CHANNEL_SCOPES
    else:
        valid_before = -(-session.expires_at // 1_000_000)
        scopes = session.scopes
    issue = CertificateRequest(
        public_key=body.public_key,
        user=login,
        server_id=server_id,
        work_session=None if session is None else session.id,
        scopes=tuple(scopes),
        valid_after=now // 1_000_000,
        valid_before=valid_before,
    )
    try:
        certificate = services.ssh_ca.issue(issue)
    except ValueError as exc:
        raise APIError(400, "INVALID_REQUEST", f"public_key: {exc}", "public_key") from None
    host_keys = await services.db.read(ssh_store.host_keys, [server_id])
    answer = {
        "certificate": certificate,
        "principal": login,
        "key_id": format_key_id(server_id, issue.work_session, login),
        "server": server_id,
        "server_name": server_name,
        "work_session": issue.work_session,
        "valid_before": iso(valid_before * 1_000_000),
        "host_key": host_keys.get(server_id),
        "ca_public_key": services.ssh_ca.public_line,
    }
    return JSONResponse(answer, status_code=201)


@router.get("/hosts/")
async def hosts(request: Request, principal: PrincipalDep, services: ServicesDep) -> JSONResponse:
    """The servers the caller may reach over SSH now (a login: its work session's; a
    superuser or token: every server), with their SSH host keys."""
    requested = request.query_params.get("work_session") or request.headers.get("x-work-session")
    now = now_us()
    if principal.gated and not (principal.is_superuser and not requested):
        if not requested:
            raise APIError(403, "work_session_required", "WorkSession required", "work_session")
        session = await services.db.read(load_settled, requested, now=now)
        if session is None or session.assigned_user != principal.user_id:
            raise APIError(403, "work_session_not_usable", f"work session {requested} is not yours")
        ids = list(session.server_ids)
        user = principal.user
        login = None if user is None else user.server_username
    else:
        _, rows = await services.db.read(
            servers_store.list_servers, name=None, is_connected=None, offset=0, limit=1000
        )
        ids = [r.id for r in rows]
        login = None
    keys = await services.db.read(ssh_store.host_keys, ids)
    names = await services.db.read(_names, ids)
    results: list[dict[str, Any]] = [
        {"id": sid, "name": names.get(sid, sid), "host_key": keys.get(sid)} for sid in ids
    ]
    return JSONResponse({"login": login, "results": results})


def _names(conn: sqlalchemy.Connection, ids: list[str]) -> dict[str, str]:
    return servers_store.names(conn, ids)


async def _open_message(
    services: Services, principal: Principal, server: str, username: str, requested: str | None
) -> tuple[str, ChannelOpen]:
    server_id, server_name = await resolve_server(services, server)
    channel_id = uuid.uuid4()
    now = now_us()
    user = principal.user
    principal_name = principal.token.service_name if user is None else user.username

    def check(conn: sqlalchemy.Connection) -> ChannelOpen | GateDenial:
        session = None
        if principal.gated:
            denial, session = _ssh_gate(
                conn,
                principal,
                requested=requested,
                server_id=server_id,
                server_name=server_name,
                line=f"ssh connection as {username}",
                now=now,
            )
            if denial is not None:
                return denial
        spec = SshSpec(username=username)
        claims = operation_claims(
            operation_id=str(channel_id),
            scope=SSH_CHANNEL_SCOPES[0],
            server_id=server_id,
            now_us=now,
            principal_name=principal_name,
            session=session,
            content=content_digest(spec),
        )
        if session is None:  # a token: every SSH request (not gated, as every channel)
            claims = claims.model_copy(update={"scopes": list(SSH_CHANNEL_SCOPES)})
        ssh_store.insert_connection(
            conn,
            SshConnectionRow(
                id=str(channel_id),
                server_id=server_id,
                username=username,
                work_session_id=None if session is None else session.id,
                owner_user=principal.user_id,
                owner_token=principal.token.id,
                created_at=now,
            ),
        )
        return ChannelOpen(
            channel_id=channel_id,
            spec=spec,
            grant=services.signer.sign(claims),
        )

    outcome = await services.db.write(check)
    if isinstance(outcome, GateDenial):
        raise APIError(403, outcome.code, outcome.detail, "work_session")
    return server_id, outcome


async def serve_client(websocket: WebSocket, server: str) -> None:
    """One SSH connection: ``?user=<login>``; the work session in ``X-Work-Session``."""
    principal = await websocket_principal(websocket)
    if principal is None:
        return
    services = services_of(websocket)
    username = websocket.query_params.get("user") or ""
    requested = websocket.headers.get("x-work-session") or websocket.query_params.get(
        "work_session"
    )
    try:
        if not username or len(username) > 64:
            raise APIError(400, "INVALID_REQUEST", "user: the login name is required", "user")
        # The certificate decides in the end; an ordinary user asking for another login
        # is told here, before the agent is bothered.
        require_session_named(principal, requested, "ssh")
        username = _login_name(principal, username)
        server_id, message = await _open_message(services, principal, server, username, requested)
    except APIError as exc:
        await deny(websocket, exc.status, exc.code, exc.detail)
        return
    # Registered as an open channel of its principal and session: deleting the token,
    # disabling the user or ending the session disconnects it (with the reason).
    owner = owner_of(principal, requested if principal.gated else None)
    channel = OpenChannel(message.channel_id, "ssh", server_id, owner)
    await serve_channel(websocket, services, message, channel)
