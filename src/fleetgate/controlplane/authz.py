"""The authorization model as a table: every route and who may call it (docs/security.md).

Each HTTP route and websocket endpoint of the app has a :class:`Rule` in :data:`RULES`,
keyed by ``(method, path)`` (``WS`` for websockets). :func:`check_rule` applies the part
that depends only on the principal, before the route runs (``deps.get_principal`` and
``channels.websocket_principal`` call it); the work-session gate itself needs the server
and the session and runs inside the route (``grants.gate_and_sign``). A route without a
rule is refused (fail closed), and a test enumerates the app's routes so a new one without
a rule fails the suite. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from starlette.routing import Mount

from fleetgate.controlplane.acl import AclRefusal
from fleetgate.controlplane.auth import Principal
from fleetgate.controlplane.errors import APIError, permission_denied


__all__ = [
    "RULES",
    "Access",
    "Rule",
    "acl_refused",
    "check_rule",
    "iter_routes",
    "require_session_named",
    "rule_for",
    "server_account",
]


class Access(StrEnum):
    """Who may call a route at all."""

    ANONYMOUS = "anonymous"
    """Anyone (log in, the OpenAPI document)."""
    AGENT = "agent"
    """An agent, with its server key (never a user's token)."""
    PRINCIPAL = "principal"
    """Any authenticated user or service token (the route limits what each one sees)."""
    SUPERUSER = "superuser"
    """A superuser (or a service token); never a token restricted by an ACL."""
    REPLICA = "replica"
    """Another replica of this control plane relaying a channel's agent side: an HMAC of
    the channel with the cluster's key (``controlplane.cluster.hop``), never a user's
    token or an agent's key."""
    CONSOLE = "console"
    """A browser signed in to the console (its login cookie, a gated ``login`` principal;
    never an ``Authorization`` header). The page calls the API's own route functions with
    that principal, so their checks (visibility, superuser actions, the gate) apply."""


@dataclass(frozen=True)
class Rule:
    """Who may call one route.

    Attributes:
        access: who may call it at all.
        operation: the operation it performs or reads (``command``, ``websh``, ``webftp``,
            ``tunnel``): a token with an ACL may call it only when the ACL names it.
        gated: a gated principal (login, or a non-superuser's own API token) needs an
            active work session with this operation's scope; the route checks it.
        acl_ok: a token with an ACL may call it although it names no operation (reading
            who one is, one's tokens, the servers).
    """

    access: Access
    operation: str | None = None
    gated: bool = False
    acl_ok: bool = False


_ANON = Rule(Access.ANONYMOUS)
_AGENT = Rule(Access.AGENT)
_SELF = Rule(Access.PRINCIPAL, acl_ok=True)
_USER = Rule(Access.PRINCIPAL)
_SUPER = Rule(Access.SUPERUSER)
_PAGE = Rule(Access.CONSOLE)
_REPLICA = Rule(Access.REPLICA)

_CMD = "/api/events/commands/"
_SESSIONS = "/api/work-sessions/sessions/"
_SRV = "/api/servers/servers/"
_TERM = "/api/websh/terminals/"

RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/api/openapi.json"): _ANON,
    ("HEAD", "/api/openapi.json"): _ANON,
    ("POST", "/api/auth/login/"): _ANON,
    # identity
    ("GET", "/api/auth/whoami/"): _SELF,
    ("GET", "/api/auth/tokens/"): _SELF,
    ("POST", "/api/auth/tokens/"): _USER,
    ("DELETE", "/api/auth/tokens/{token_id}/"): _USER,
    ("GET", "/api/iam/users/"): _SUPER,
    ("POST", "/api/iam/users/"): _SUPER,
    ("PATCH", "/api/iam/users/{user_ref}/"): _SUPER,
    # servers
    ("POST", f"{_SRV}register/"): _SUPER,
    ("GET", f"{_SRV}-/"): _AGENT,
    ("DELETE", f"{_SRV}-/"): _AGENT,
    ("GET", _SRV): _SELF,
    ("GET", f"{_SRV}{{ref}}/"): _SELF,
    ("DELETE", f"{_SRV}{{ref}}/"): _SUPER,
    ("PATCH", f"{_SRV}{{ref}}/labels/"): _SUPER,
    # commands: creating one and reading its output are gated operations
    ("POST", _CMD): Rule(Access.PRINCIPAL, "command", gated=True),
    ("GET", _CMD): Rule(Access.PRINCIPAL, "command"),
    ("GET", f"{_CMD}{{command_id}}/"): Rule(Access.PRINCIPAL, "command", gated=True),
    ("GET", f"{_CMD}{{command_id}}/chunks/"): Rule(Access.PRINCIPAL, "command", gated=True),
    ("GET", f"{_CMD}{{command_id}}/stream/"): Rule(Access.PRINCIPAL, "command", gated=True),
    ("POST", f"{_CMD}{{command_id}}/cancel/"): Rule(Access.PRINCIPAL, "command"),
    # fan-outs: one command per server, each gated like a single command
    ("POST", "/api/events/fanouts/"): Rule(Access.PRINCIPAL, "command", gated=True),
    ("GET", "/api/events/fanouts/{fanout_id}/"): Rule(Access.PRINCIPAL, "command"),
    ("GET", "/api/events/fanouts/{fanout_id}/results/"): Rule(
        Access.PRINCIPAL, "command", gated=True
    ),
    ("GET", "/api/events/fanouts/{fanout_id}/stream/"): Rule(
        Access.PRINCIPAL, "command", gated=True
    ),
    # work sessions (approve, reject and revoke are the approver's)
    ("POST", _SESSIONS): _USER,
    ("GET", _SESSIONS): _USER,
    ("GET", f"{_SESSIONS}{{session_id}}/"): _USER,
    ("PATCH", f"{_SESSIONS}{{session_id}}/"): _USER,
    ("GET", f"{_SESSIONS}{{session_id}}/timeline/"): _USER,
    ("POST", f"{_SESSIONS}{{session_id}}/approve/"): _SUPER,
    ("POST", f"{_SESSIONS}{{session_id}}/reject/"): _SUPER,
    ("POST", f"{_SESSIONS}{{session_id}}/revoke/"): _SUPER,
    ("POST", f"{_SESSIONS}{{session_id}}/activate/"): _USER,
    ("POST", f"{_SESSIONS}{{session_id}}/complete/"): _USER,
    ("POST", f"{_SESSIONS}{{session_id}}/cancel/"): _USER,
    ("POST", f"{_SESSIONS}{{session_id}}/extend/"): _USER,
    # terminals
    ("POST", _TERM): Rule(Access.PRINCIPAL, "websh", gated=True),
    ("GET", _TERM): Rule(Access.PRINCIPAL, "websh"),
    ("GET", f"{_TERM}{{terminal_id}}/"): Rule(Access.PRINCIPAL, "websh"),
    ("DELETE", f"{_TERM}{{terminal_id}}/"): Rule(Access.PRINCIPAL, "websh"),
    ("GET", f"{_TERM}{{terminal_id}}/recording/"): Rule(Access.PRINCIPAL, "websh"),
    ("WS", "/ws/websh/{terminal_id}/"): Rule(Access.PRINCIPAL, "websh", gated=True),
    # file transfers
    ("WS", "/ws/files/"): Rule(Access.PRINCIPAL, "webftp", gated=True),
    # tunnels
    ("POST", "/api/tunnels/"): Rule(Access.PRINCIPAL, "tunnel", gated=True),
    ("GET", "/api/tunnels/"): Rule(Access.PRINCIPAL, "tunnel"),
    ("GET", "/api/tunnels/{tunnel_id}/"): Rule(Access.PRINCIPAL, "tunnel"),
    ("DELETE", "/api/tunnels/{tunnel_id}/"): Rule(Access.PRINCIPAL, "tunnel"),
    ("WS", "/ws/tunnels/{tunnel_id}/streams/"): Rule(Access.PRINCIPAL, "tunnel", gated=True),
    # SSH through ssh channels (a token's ACL must name "ssh"; none can yet)
    ("POST", "/api/ssh/certificates/"): Rule(Access.PRINCIPAL, "ssh", gated=True),
    ("GET", "/api/ssh/hosts/"): Rule(Access.PRINCIPAL, "ssh", gated=True),
    ("WS", "/ws/ssh/{server}/"): Rule(Access.PRINCIPAL, "ssh", gated=True),
    # agents
    ("WS", "/ws/agent/backhaul/"): _AGENT,
    ("WS", "/ws/agent/channels/{channel_id}/"): _AGENT,
    ("WS", "/ws/agent/pool/"): _AGENT,
    ("WS", "/ws/agent/recordings/{terminal_id}/"): _AGENT,
    # replicas: the agent side of a channel, relayed from the replica the agent dialled
    ("WS", "/ws/cluster/channels/{channel_id}/"): _REPLICA,
    # the web console (controlplane/console): login and static files are open
    ("GET", "/"): _ANON,
    ("GET", "/api/docs"): _ANON,
    ("GET", "/console/static"): _ANON,
    ("GET", "/console/login"): _ANON,
    ("POST", "/console/login"): _ANON,
    ("POST", "/console/logout"): _PAGE,
    ("GET", "/console/sessions"): _PAGE,
    ("GET", "/console/servers"): _PAGE,
    ("GET", "/console/sessions/new"): _PAGE,
    ("POST", "/console/sessions/new"): _PAGE,
    ("POST", "/console/preview"): _PAGE,
    ("GET", "/console/approvals"): _PAGE,
    ("POST", "/console/approvals"): _PAGE,
    ("GET", "/console/sessions/{session_id}"): _PAGE,
    ("GET", "/console/sessions/{session_id}/timeline"): _PAGE,
    ("GET", "/console/sessions/{session_id}/launch"): _PAGE,
    ("POST", "/console/sessions/{session_id}/act"): _PAGE,
    ("POST", "/console/sessions/{session_id}/commands"): _PAGE,
    ("POST", "/console/sessions/{session_id}/terminals"): _PAGE,
    ("GET", "/console/terminals/{terminal_id}/recording"): _PAGE,
}
"""Every route of the app and its rule (``test_cp_authz`` keeps this complete)."""


def rule_for(method: str, path: str) -> Rule | None:
    """The rule of a route (``method`` ``WS`` for a websocket), or ``None``."""
    return RULES.get((method.upper(), path))


def acl_refused(detail: str, source: str | None = None) -> APIError:
    """403 ``API_TOKEN_ACL_NOT_ALLOWED``: the token's ACL does not allow this."""
    return APIError(403, "API_TOKEN_ACL_NOT_ALLOWED", detail, source)


def check_rule(rule: Rule | None, principal: Principal, *, route: str) -> None:
    """Refuse ``principal`` what ``rule`` does not let it do (before the route runs).

    Raises:
        APIError: 403 ``PERMISSION_DENIED`` (no rule, an agent route, a superuser route,
            a route without an operation for a token with an ACL) or
            ``API_TOKEN_ACL_NOT_ALLOWED`` (an operation outside the token's ACL).
    """
    if rule is None or rule.access in (Access.AGENT, Access.REPLICA):
        raise permission_denied(f"{route} is not open to this principal.")
    if rule.access is Access.ANONYMOUS:
        return
    acl = principal.acl
    if rule.access is Access.SUPERUSER and not principal.is_superuser:
        raise permission_denied()
    if acl is None or rule.acl_ok:
        return
    if rule.operation is None:
        # Administration, tokens, work sessions: never with a restricted token.
        raise permission_denied(f"A token restricted by an ACL cannot use {route}.")
    if not acl.allows_operation(rule.operation):
        raise acl_refused(f"This token's ACL does not allow {rule.operation} ({route}).")


def require_session_named(principal: Principal, requested: str | None, scope: str) -> None:
    """The gate's first check, which needs no I/O: a gated principal names a session.

    Runs before the identity checks, so a user without a session is told to get one.

    Raises:
        APIError: 403 ``work_session_required``.
    """
    if principal.gated and not requested:
        raise APIError(403, "work_session_required", "WorkSession required", scope)


def server_account(
    principal: Principal, requested: str | None, group: str | None = None, *, what: str
) -> str:
    """The account an operation (``what``: a command, a terminal, a transfer) runs as.

    A gated non-superuser acts as their mapped ``server_username`` only: naming another
    account (root included) or a group is refused; root is reached through ``sudo: true``
    and the session's sudo patterns, which the caller handles before this. Superusers and
    ungated tokens name any account, root by default (an ACL's ``users`` may narrow it).

    Raises:
        APIError: 403 ``SERVER_USERNAME_NOT_SET`` or ``IDENTITY_NOT_ALLOWED``;
            ``API_TOKEN_ACL_NOT_ALLOWED`` for an account outside the ACL's ``users``.
    """
    if not principal.identity_bound:
        account = requested or "root"
        if principal.acl is not None:
            try:
                principal.acl.check_user(account)
            except AclRefusal as exc:
                raise acl_refused(exc.detail, "username") from None
        return account
    mapped = None if principal.user is None else principal.user.server_username
    if mapped is None:
        raise APIError(
            403,
            "SERVER_USERNAME_NOT_SET",
            f"{what} runs as your own account on the server, and you have none yet: ask a "
            "superuser to set your server username (PATCH /api/iam/users/<you>/).",
            "username",
        )
    if requested not in (None, mapped):
        raise APIError(
            403,
            "IDENTITY_NOT_ALLOWED",
            f"{what} runs as your server account {mapped!r}; running as {requested!r} is not "
            "allowed (root only through sudo: true and a sudo pattern of your work session).",
            "username",
        )
    if group:
        raise APIError(
            403,
            "IDENTITY_NOT_ALLOWED",
            f"{what} runs with your server account's own groups; naming group {group!r} is "
            "not allowed.",
            "groupname",
        )
    return mapped


def iter_routes(routes: Iterable[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(method, path)`` of every route of an app (``WS`` for websockets), descending
    into included routers (FastAPI versions that keep them nested)."""
    for route in routes:
        nested = getattr(route, "original_router", None)
        if nested is not None:
            inner = prefix + getattr(getattr(route, "include_context", None), "prefix", "")
            yield from iter_routes(nested.routes, inner)
            continue
        if isinstance(route, Mount):  # static files
            yield "GET", prefix + route.path
            continue
        methods = getattr(route, "methods", None) or {"WS"}
        for method in sorted(methods):
            yield method, prefix + route.path
