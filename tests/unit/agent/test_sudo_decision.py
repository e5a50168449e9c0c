"""The sudo decision (pure), the session registry, the plugin's request parsing and the
installer's sudo.conf block handling."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from fleetgate.agent.policy import GrantRefused
from fleetgate.agent.policy.sudo_decision import SessionGrant, SudoCall, decide
from fleetgate.agent.sudo import SudoSessions
from fleetgate.agent.sudo.elevation import ElevationPolicy
from fleetgate.agent.sudo.install import BEGIN, END, SudoLayout, _block, _split
from fleetgate.agent.sudo.request import BadRequest, parse_request
from fleetgate.shared.protocol import CommandRun, GrantClaims
from fleetgate.shared.sudo_patterns import Resolver


RESOLVER = Resolver.from_path("/usr/bin", lambda p: p in {"/usr/bin/id", "/usr/bin/rm"})
NOW = 1_000_000.0


def grant(**changes: object) -> SessionGrant:
    fields: dict[str, object] = {
        "label": "command x",
        "work_session": "ws1",
        "assignee": "alice",
        "scopes": frozenset({"command", "sudo"}),
        "expires_at": NOW + 60,
        "patterns": ("id -u", "rm -f /tmp/x"),
    }
    fields.update(changes)
    return SessionGrant(**fields)  # type: ignore[arg-type]


def call(*argv: str, **changes: object) -> SudoCall:
    fields: dict[str, object] = {
        "command": f"/usr/bin/{argv[0]}",
        "argv": argv,
        "runas_uid": 0,
        "runas_gid": 0,
    }
    fields.update(changes)
    return SudoCall(**fields)  # type: ignore[arg-type]


def verdict(g: SessionGrant | None, c: SudoCall, **kw: object) -> tuple[bool, str]:
    options: dict[str, object] = {
        "now": NOW,
        "unmanaged": "allow",
        "fleet_member": False,
        "resolver": RESOLVER,
    }
    options.update(kw)
    v = decide(g, c, **options)  # type: ignore[arg-type]
    return v.allowed, v.code


def test_managed_session_order_of_checks() -> None:
    assert verdict(grant(), call("id", "-u")) == (True, "allowed")
    assert verdict(grant(), call("id", "-u", "-n")) == (False, "sudo_pattern_not_allowed")
    assert verdict(grant(ended=True), call("id", "-u")) == (False, "work_session_ended")
    assert verdict(grant(), call("id", "-u"), now=NOW + 60) == (False, "work_session_expired")
    assert verdict(grant(expires_at=None), call("id", "-u"), now=NOW * 9) == (True, "allowed")
    no_scope = grant(scopes=frozenset({"command"}))
    assert verdict(no_scope, call("id", "-u")) == (False, "work_session_scope_not_allowed")
    assert verdict(grant(), call("id", "-u", sudoedit=True)) == (False, "sudo_edit_not_allowed")
    assert verdict(grant(), call("id", "-u", shell=True)) == (False, "sudo_shell_not_allowed")
    assert verdict(grant(), call("id", "-u", runas_uid=1)) == (False, "sudo_runas_not_allowed")
    assert verdict(grant(), call("id", "-u", runas_gid=5)) == (False, "sudo_runas_not_allowed")


def test_broken_patterns_are_inert() -> None:
    g = grant(patterns=("id -u; rm", "id $(x)", "id -u"))
    assert verdict(g, call("id", "-u")) == (True, "allowed")
    assert verdict(grant(patterns=("id -u; rm",)), call("id", "-u"))[0] is False


def test_unmanaged_policy() -> None:
    assert verdict(None, call("rm", "-rf", "/")) == (True, "unmanaged_allowed")
    assert verdict(None, call("id"), unmanaged="deny") == (False, "sudo_unmanaged_denied")
    assert verdict(None, call("id"), fleet_member=True) == (False, "sudo_unmanaged_denied")


def claims(work_session: str | None = "ws1", **changes: object) -> GrantClaims:
    server = uuid.uuid4()
    fields: dict[str, object] = {
        "command_id": uuid.uuid4(),
        "server_id": server,
        "auth": "work_session" if work_session else "token",
        "work_session": work_session,
        "assignee": "alice",
        "scopes": ["command", "sudo"],
        "servers": [server],
        "not_before": 0,
        "expires_at": 2_000_000_000,
        "sudo": ["id -u"],
        "content": "0" * 64,
    }
    fields.update(changes)
    return GrantClaims.model_validate(fields)


def test_registry_registers_revokes_and_forgets() -> None:
    reg = SudoSessions()
    reg.register(100, claims(), label="command a")
    reg.register(200, claims("ws2"), label="command b")
    reg.register(300, claims(None), label="command c")  # a token's command: unmanaged
    reg.register(400, None, label="command d")
    assert len(reg) == 4
    entry = reg.lookup(100)
    assert entry is not None
    assert (entry.work_session, entry.patterns, entry.expires_at) == ("ws1", ("id -u",), 2e9)
    assert reg.known(300)
    assert reg.lookup(300) is None
    assert not reg.known(999)
    assert reg.end_work_session("ws1") == 1
    ended = reg.lookup(100)
    assert ended is not None
    assert ended.ended
    other = reg.lookup(200)
    assert other is not None
    assert not other.ended
    # A session registered after its work session ended starts ended.
    reg.register(500, claims(), label="command e")
    late = reg.lookup(500)
    assert late is not None
    assert late.ended
    reg.unregister(100)
    reg.unregister(12345)  # unknown: ignored
    assert not reg.known(100)
    assert {e["sid"] for e in reg.snapshot()} == {200, 300, 400, 500}


def test_parse_request() -> None:
    c = parse_request(
        b'{"v":1,"command":"/usr/bin/id","argv":["id","-u"],"runas_uid":0,"runas_gid":0,'
        b'"shell":false,"sudoedit":false,"caller_uid":0}',
        caller_uid=1000,
        caller_user="alice",
    )
    assert (c.command, c.argv, c.caller_uid, c.caller_user) == (
        "/usr/bin/id",
        ("id", "-u"),
        1000,  # from the kernel, never from the request
        "alice",
    )
    for bad in (
        b"not json",
        b"[]",
        b'{"command":"","argv":["x"],"runas_uid":0,"runas_gid":0}',
        b'{"command":"/x","argv":[],"runas_uid":0,"runas_gid":0}',
        b'{"command":"/x","argv":[1],"runas_uid":0,"runas_gid":0}',
        b'{"command":"/x","argv":["x"],"runas_uid":"0","runas_gid":0}',
        b'{"command":"/x","argv":["x"],"runas_uid":true,"runas_gid":0}',
    ):
        with pytest.raises(BadRequest):
            parse_request(bad, caller_uid=1, caller_user="a")


def test_sudo_conf_block_round_trip() -> None:
    layout = SudoLayout(socket=Path("/run/fa/sudo.sock"), group="g", plugin_dir=Path("/p"))
    block = _block(layout, "", created=False, added_newline=False)
    assert block.startswith(BEGIN)
    assert block.endswith(END + "\n")
    assert "Plugin sudoers_policy sudoers.so" in block  # none named: sudoers must be
    assert "Plugin fleet_approval /p/fleet_approval.so socket=/run/fa/sudo.sock" in block
    existing = "Plugin sudoers_policy sudoers.so\n"
    assert "sudoers_policy" not in _block(layout, existing, created=False, added_newline=False)
    original = "# a comment\nSet disable_coredump false\n"
    rest, found = _split(original + block)
    assert (rest, found) == (original, block)
    assert _split(original) == (original, None)


def test_api_elevation_checks_the_line_on_the_agent() -> None:
    policy = ElevationPolicy("/usr/bin:/bin")
    grant_claims = claims(sudo=["id -u", "journalctl -u nginx *"])

    def run(line: str, **fields: object) -> CommandRun:
        return CommandRun(command_id=uuid.uuid4(), line=line, sudo=True, **fields)

    assert policy.check(run("id -u"), grant_claims) == "/usr/bin/id -u"
    assert policy.check(run("journalctl  -u nginx -n 5"), grant_claims) == (
        "/usr/bin/journalctl -u nginx -n 5"
    )
    refusals = [
        (run("id -un"), grant_claims, "sudo_pattern_not_allowed"),
        (run("id -u; rm -rf /"), grant_claims, "sudo_pattern_not_allowed"),
        (run("journalctl -u nginx $(id)"), grant_claims, "sudo_pattern_not_allowed"),
        (run("nosuchcommand -u"), grant_claims, "sudo_pattern_not_allowed"),
        (run("id -u", username="alice"), grant_claims, "sudo_runas_not_allowed"),
        (run("id -u"), claims(None), "work_session_required"),
        (run("id -u"), None, "work_session_required"),
    ]
    for message, given, code in refusals:
        with pytest.raises(GrantRefused) as refused:
            policy.check(message, given)
        assert refused.value.code == code, message.line
