"""Token ACLs per operation (``fleetgate.controlplane.acl``) and the identity rule
(``authz.server_account``), without an event loop."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fleetgate.controlplane.acl import AclRefusal, TokenAcl
from fleetgate.controlplane.auth import Principal
from fleetgate.controlplane.authz import RULES, Access, check_rule, server_account
from fleetgate.controlplane.errors import APIError
from fleetgate.controlplane.store.users import TokenKind, TokenRow, UserRow


def principal(
    kind: TokenKind = "api",
    *,
    superuser: bool = False,
    gated: bool = False,
    acl: TokenAcl | None = None,
    mapped: str | None = None,
) -> Principal:
    user = UserRow(1, "carol", "", superuser, True, 0, server_username=mapped)
    token = TokenRow("t", kind, "t", 1, None, None, 0, None, gated=gated, acl=acl)
    return Principal(token=token, user=user)


def test_an_acl_allows_only_what_it_names() -> None:
    acl = TokenAcl(command=("uptime",))
    assert acl.allows_operation("command")
    for operation in ("websh", "webftp", "tunnel", "sudo", "anything"):
        assert not acl.allows_operation(operation)
    acl.check_command("uptime", [], "root")
    with pytest.raises(AclRefusal):
        acl.check_command("uptime", ["LANG"], "root")
    with pytest.raises(AclRefusal):
        acl.check_command("uptime; id", [], "root")


def test_paths_ports_and_users() -> None:
    acl = TokenAcl(webftp=("/srv/site/",), tunnel=(5432,), users=("deploy",))
    acl.check_path("/srv/site/index.html", "deploy")
    acl.check_path("/srv/site", "deploy")
    for path in ("/srv/site/../../etc/shadow", "/srv/sitex/a", "relative", "/"):
        with pytest.raises(AclRefusal):
            acl.check_path(path, "deploy")
    with pytest.raises(AclRefusal):
        acl.check_path("/srv/site/a", "root")
    acl.check_port(5432)
    with pytest.raises(AclRefusal):
        acl.check_port(22)


@pytest.mark.parametrize(
    "bad",
    [
        {"tunnel": [0]},
        {"webftp": ["relative/path"]},
        {"env": ["NOT-A-NAME"]},
        {"command": [" "]},
        {"shell": True},
    ],
)
def test_bad_acls_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TokenAcl.model_validate(bad)


def test_gated_and_identity_bound() -> None:
    assert principal("login").gated
    assert principal("api", gated=True).gated
    assert not principal("api").gated
    assert principal("login").identity_bound
    assert not principal("login", superuser=True).identity_bound
    assert not principal("api").identity_bound


def test_server_account() -> None:
    bound = principal("login", mapped="carol")
    assert server_account(bound, None, what="x") == "carol"
    assert server_account(bound, "carol", what="x") == "carol"
    for other in ("root", "daemon"):
        with pytest.raises(APIError) as info:
            server_account(bound, other, what="x")
        assert info.value.code == "IDENTITY_NOT_ALLOWED"
    with pytest.raises(APIError) as info:
        server_account(bound, None, "root", what="x")
    assert info.value.code == "IDENTITY_NOT_ALLOWED"
    with pytest.raises(APIError) as info:
        server_account(principal("login"), None, what="x")
    assert info.value.code == "SERVER_USERNAME_NOT_SET"
    assert server_account(principal("api"), None, what="x") == "root"
    assert server_account(principal("api", superuser=True), "www", what="x") == "www"
    restricted = principal("api", acl=TokenAcl(command=("id",), users=("www",)))
    with pytest.raises(APIError) as info:
        server_account(restricted, None, what="x")
    assert info.value.code == "API_TOKEN_ACL_NOT_ALLOWED"


def test_rules_for_every_kind_of_principal() -> None:
    restricted = principal("api", superuser=True, acl=TokenAcl(command=("id",)))
    for (method, path), rule in RULES.items():
        route = f"{method} {path}"
        if rule.access is Access.AGENT:
            with pytest.raises(APIError):
                check_rule(rule, principal("api", superuser=True), route=route)
            continue
        if rule.access is Access.SUPERUSER:
            with pytest.raises(APIError) as info:
                check_rule(rule, principal("login"), route=route)
            assert info.value.code == "PERMISSION_DENIED"
        if rule.acl_ok or rule.operation == "command" or rule.access is Access.ANONYMOUS:
            check_rule(rule, restricted, route=route)
        else:
            with pytest.raises(APIError):
                check_rule(rule, restricted, route=route)
    with pytest.raises(APIError):
        check_rule(None, principal("api", superuser=True), route="GET /new/")
