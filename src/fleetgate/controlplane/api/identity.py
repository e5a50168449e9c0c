"""``/api/auth/`` (login, whoami, tokens) and ``/api/iam/users/``."""

from __future__ import annotations

import asyncio
from datetime import datetime

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetgate.controlplane.acl import TokenAcl
from fleetgate.controlplane.api.deps import PrincipalDep, Services, ServicesDep, SuperuserDep
from fleetgate.controlplane.api.serializers import token_json, user_json, whoami_json
from fleetgate.controlplane.auth import Principal
from fleetgate.controlplane.errors import (
    APIError,
    authentication_failed,
    invalid_request,
    permission_denied,
    validation_detail,
)
from fleetgate.controlplane.hub.channelregistry import Revocation
from fleetgate.controlplane.hub.revocation import Revoker
from fleetgate.controlplane.store import users as users_store
from fleetgate.controlplane.timeutil import iso, now_us, to_us


__all__ = ["router"]

router = APIRouter()

USERNAME_PATTERN = r"^[A-Za-z0-9_.@+-]{1,150}$"
SERVER_USERNAME_PATTERN = r"^[a-z_][a-z0-9_.-]{0,31}$"
"""A Linux account name (the portable subset useradd accepts)."""


class LoginBody(BaseModel):
    """``POST /api/auth/login/``."""

    model_config = ConfigDict(extra="ignore")
    username: str = Field(min_length=1, max_length=150)
    password: str = Field(min_length=1, max_length=1024)


class TokenCreateBody(BaseModel):
    """``POST /api/auth/tokens/``."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=100)
    expires_at: datetime | None = None
    command_acl: list[str] | None = Field(default=None, max_length=1000)
    acl: dict[str, object] | None = None
    gated: bool | None = None
    user: int | str | None = None


class UserCreateBody(BaseModel):
    """``POST /api/iam/users/``."""

    model_config = ConfigDict(extra="ignore")
    username: str = Field(pattern=USERNAME_PATTERN)
    email: str = Field(default="", max_length=254)
    password: str | None = Field(default=None, min_length=1, max_length=1024)
    is_superuser: bool = False
    server_username: str | None = Field(default=None, pattern=SERVER_USERNAME_PATTERN)


class UserUpdateBody(BaseModel):
    """``PATCH /api/iam/users/<id or username>/``: only the fields given change."""

    model_config = ConfigDict(extra="forbid")
    server_username: str | None = Field(default=None, pattern=SERVER_USERNAME_PATTERN)
    is_active: bool | None = None


def _check_server_username(name: str | None) -> None:
    # Mapping a user to root would make every command of theirs a root command without
    # a sudo pattern; root is reached through sudo patterns only.
    if name == "root":
        raise invalid_request(
            "server_username: root cannot be a default identity; use sudo patterns",
            "server_username",
        )


@router.post("/api/auth/login/")
async def login(body: LoginBody, services: ServicesDep) -> JSONResponse:
    """Exchange a username and password for a ``login`` token."""
    found = await services.db.read(users_store.get_user_by_username, body.username)
    stored = None if found is None else found[1]
    # Verify even for an unknown user, so timing does not reveal which usernames exist.
    ok = await asyncio.to_thread(users_store.verify_password, body.password, stored or _DUMMY_HASH)
    if found is None or stored is None or not ok or not found[0].is_active:
        raise authentication_failed("Unable to log in with the provided credentials.")
    now = now_us()
    expires_at = now + int(services.settings.login_token_ttl * 1_000_000)
    _token, key = await services.db.write(
        users_store.create_token,
        kind="login",
        name="login",
        user_id=found[0].id,
        expires_at=expires_at,
        now=now,
    )
    return JSONResponse({"token": key, "expires_at": iso(expires_at)})


_DUMMY_HASH = users_store.hash_password("not a password")


@router.get("/api/auth/whoami/")
async def whoami(principal: PrincipalDep) -> JSONResponse:
    """Who the token belongs to."""
    return JSONResponse(whoami_json(principal))


@router.get("/api/auth/tokens/")
async def list_tokens(principal: PrincipalDep, services: ServicesDep) -> JSONResponse:
    """The caller's tokens (keys are never shown again)."""
    tokens = await services.db.read(
        users_store.list_tokens,
        user_id=principal.user_id,
        service_name=principal.token.service_name,
    )
    return JSONResponse([token_json(t) for t in tokens])


def _parse_acl(body: TokenCreateBody) -> TokenAcl | None:
    if body.acl is not None and body.command_acl is not None:
        raise invalid_request("give acl or command_acl, not both", "acl")
    try:
        if body.acl is not None:
            return TokenAcl.model_validate(body.acl)
        if body.command_acl is not None:
            return TokenAcl(command=tuple(body.command_acl))
    except ValidationError as exc:
        detail, source = validation_detail(exc.errors())
        field = "acl" if body.acl is not None else "command_acl"
        raise invalid_request(f"{field}: {detail}", field if source is None else source) from None
    return None


def _may_issue_ungated(principal: Principal) -> bool:
    """Only a superuser signed in with a password, or holding an ungated token, issues
    tokens that bypass work sessions (a gated token never mints an ungated one)."""
    return (
        principal.is_superuser
        and principal.user is not None
        and (principal.kind == "login" or not principal.token.gated)
    )


async def _token_owner(body: TokenCreateBody, principal: Principal, services: Services) -> int:
    assert principal.user_id is not None
    if body.user is None or body.user in (principal.user_id, principal.name):
        return principal.user_id
    if not _may_issue_ungated(principal):
        raise permission_denied("Only a superuser may issue a token for another user.")
    ref = body.user
    user = await services.db.read(users_store.find_user, ref)
    if user is None:
        raise invalid_request(f"user: no user {ref!r}", "user")
    return user.id


@router.post("/api/auth/tokens/", status_code=201)
async def create_token(
    body: TokenCreateBody, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    """Create an API token; its key is in this response only (docs/security.md).

    A superuser's token (for themself or, with ``user``, for someone) bypasses work
    sessions unless ``gated: true``; a non-superuser's token is always gated. No token
    is more powerful than the principal that made it.
    """
    if principal.user_id is None:
        raise permission_denied("A service token cannot create tokens.")
    if principal.acl is not None:
        raise permission_denied("A token restricted by an ACL cannot create tokens.")
    now = now_us()
    expires_at = None if body.expires_at is None else to_us(body.expires_at)
    if expires_at is not None and expires_at <= now:
        raise invalid_request("expires_at: must be in the future", "expires_at")
    acl = _parse_acl(body)
    ungated_ok = _may_issue_ungated(principal)
    if body.gated is False and not ungated_ok:
        raise permission_denied(
            "Only a superuser issues tokens that bypass work sessions; this token would be "
            "gated like your login."
        )
    owner = await _token_owner(body, principal, services)
    token, key = await services.db.write(
        users_store.create_token,
        kind="api",
        name=body.name,
        user_id=owner,
        acl=acl,
        gated=not ungated_ok if body.gated is None else body.gated,
        expires_at=expires_at,
        now=now,
    )
    out = token_json(token)
    out["key"] = key
    return JSONResponse(out, status_code=201)


def _revoker(request: Request) -> Revoker:
    revoker: Revoker = request.app.state.revoker
    return revoker


@router.delete("/api/auth/tokens/{token_id}/", status_code=204)
async def delete_token(
    token_id: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> Response:
    """Delete one of the caller's tokens; what it opened ends (``token_revoked``)."""
    if principal.user_id is None:
        raise permission_denied("A service token cannot delete tokens.")
    if principal.acl is not None:
        raise permission_denied("A token restricted by an ACL cannot delete tokens.")
    deleted = await services.db.write(users_store.delete_token, token_id, user_id=principal.user_id)
    if not deleted:
        raise APIError(404, "TOKEN_NOT_FOUND", "No such token.")
    services.principals.clear()
    revocation = Revocation("token_revoked", "the token was deleted", token_id=token_id)
    await _revoker(request).revoke(revocation)
    return Response(status_code=204)


@router.get("/api/iam/users/")
async def list_users(principal: SuperuserDep, services: ServicesDep) -> JSONResponse:
    """Every user (superuser only)."""
    return JSONResponse([user_json(u) for u in await services.db.read(users_store.list_users)])


@router.post("/api/iam/users/", status_code=201)
async def create_user(
    body: UserCreateBody, principal: SuperuserDep, services: ServicesDep
) -> JSONResponse:
    """Create a user (superuser only; not with a token restricted by an ACL)."""
    if principal.acl is not None:
        raise permission_denied("A token restricted by an ACL cannot create users.")
    _check_server_username(body.server_username)
    password_hash = None
    if body.password is not None:
        password_hash = await asyncio.to_thread(users_store.hash_password, body.password)
    user = await services.db.write(
        users_store.create_user,
        body.username,
        email=body.email,
        password_hash=password_hash,
        is_superuser=body.is_superuser,
        server_username=body.server_username,
        now=now_us(),
    )
    if user is None:
        raise APIError(409, "USER_ALREADY_EXISTS", "A user with that username exists.", "username")
    return JSONResponse(user_json(user), status_code=201)


@router.patch("/api/iam/users/{user_ref}/")
async def update_user(
    user_ref: str,
    body: UserUpdateBody,
    request: Request,
    principal: SuperuserDep,
    services: ServicesDep,
) -> JSONResponse:
    """Change a user (superuser only): set (or clear, with ``null``) ``server_username``,
    enable or disable them (``is_active``). Disabling ends at once every terminal, tunnel
    and transfer the user opened (``user_disabled``); their tokens stop authenticating.
    Only the fields given change."""
    given = body.model_fields_set
    if "server_username" in given:
        _check_server_username(body.server_username)
    user = await services.db.read(users_store.find_user, user_ref)
    if user is None:
        raise APIError(404, "USER_NOT_FOUND", f"No user {user_ref[:150]!r}.")
    if body.is_active is False and principal.user_id == user.id:
        raise invalid_request("is_active: you cannot disable yourself", "is_active")
    if "server_username" in given:
        user = await services.db.write(
            users_store.set_server_username, user.id, body.server_username
        )
        if user is None:
            raise APIError(404, "USER_NOT_FOUND", f"No user {user_ref[:150]!r}.")
        services.principals.clear()  # cached principals carry the old mapping
    if body.is_active is not None:
        user = await set_active(request, services, user.id, body.is_active)
        if user is None:
            raise APIError(404, "USER_NOT_FOUND", f"No user {user_ref[:150]!r}.")
    return JSONResponse(user_json(user))


async def set_active(
    request: Request, services: Services, user_id: int, active: bool
) -> users_store.UserRow | None:
    """Enable or disable user ``user_id``; ``None`` if there is no such user.

    Disabling clears the principal cache (their tokens stop authenticating now) and
    revokes what they have open (``user_disabled``); enabling forgets that revocation.
    """
    user = await services.db.write(users_store.set_active, user_id, active)
    if user is None:
        return None
    if active:
        services.hub.channels.open.reinstate_user(user.id)
    else:
        services.principals.clear()
        revocation = Revocation(
            "user_disabled", f"user {user.username!r} was disabled", user_id=user.id
        )
        await _revoker(request).revoke(revocation)
    return user
