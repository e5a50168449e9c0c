"""resolve_identity and build_environment."""

from __future__ import annotations

import grp
import os
import pwd

import pytest

from fleetgate.agent.errors import PrivilegeError, UnknownGroup, UnknownUser
from fleetgate.agent.exec.identity import BASE_PATH, Identity, build_environment, resolve_identity
from fleetgate.agent.exec.spawn import privilege_argv
from tests.support.users import require_root


IDENTITY = Identity(
    name="alice", uid=1234, gid=1234, groups=(1234, 27), home="/home/alice", shell="/bin/bash"
)


def _group_root_is_not_in() -> str:
    root_groups = set(os.getgrouplist("root", 0))
    for group in grp.getgrall():
        if group.gr_gid not in root_groups and "root" not in group.gr_mem:
            return group.gr_name
    pytest.skip("every group on this machine includes root")


def test_environment_has_exactly_the_base_keys() -> None:
    assert build_environment(IDENTITY, {}) == {
        "PATH": BASE_PATH,
        "HOME": "/home/alice",
        "USER": "alice",
        "LOGNAME": "alice",
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
    }


def test_environment_extra_adds_and_overrides() -> None:
    env = build_environment(IDENTITY, {"LANG": "de_DE.UTF-8", "DEPLOY_ENV": "prod"})
    assert env["LANG"] == "de_DE.UTF-8"
    assert env["DEPLOY_ENV"] == "prod"
    assert env["PATH"] == BASE_PATH


def test_environment_falls_back_to_bin_sh() -> None:
    identity = Identity(name="x", uid=1, gid=1, groups=(1,), home="/", shell="")
    assert build_environment(identity, {})["SHELL"] == "/bin/sh"


def test_environment_does_not_leak_the_daemons_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEET_AGENT_SECRET_SENTINEL", "leaked")
    monkeypatch.setenv("PATH", "/daemon/only/bin")
    env = build_environment(IDENTITY, {})
    assert "FLEET_AGENT_SECRET_SENTINEL" not in env
    assert env["PATH"] == BASE_PATH
    assert "leaked" not in env.values()


def test_environment_returns_a_fresh_dict() -> None:
    extra = {"A": "1"}
    env = build_environment(IDENTITY, extra)
    env["B"] = "2"
    assert extra == {"A": "1"}
    assert "B" not in build_environment(IDENTITY, extra)


@pytest.mark.root
def test_resolve_root() -> None:
    require_root()
    identity = resolve_identity("root", None)
    assert (identity.name, identity.uid, identity.gid) == ("root", 0, 0)
    assert identity.groups[0] == 0
    assert len(set(identity.groups)) == len(identity.groups)
    assert set(identity.groups) == set(os.getgrouplist("root", 0))
    assert identity.home == "/root"
    assert identity.shell


@pytest.mark.root
def test_resolve_root_with_its_primary_group_by_name() -> None:
    require_root()
    group = grp.getgrgid(0).gr_name
    assert resolve_identity("root", group).gid == 0
    assert resolve_identity("root", "").gid == 0


def test_unknown_user() -> None:
    with pytest.raises(UnknownUser, match=r"^unknown user 'nosuch-user-x'$"):
        resolve_identity("nosuch-user-x", None)


def test_unknown_group() -> None:
    with pytest.raises(UnknownGroup, match=r"unknown group 'nosuch-group-x'"):
        resolve_identity("root", "nosuch-group-x")


def test_group_the_user_is_not_in() -> None:
    group = _group_root_is_not_in()
    with pytest.raises(UnknownGroup, match=rf"user 'root' is not a member of group '{group}'"):
        resolve_identity("root", group)


def test_non_root_agent_cannot_switch_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    with pytest.raises(
        PrivilegeError, match=r"^the agent runs as uid 4242 and cannot run commands as 'root'$"
    ):
        resolve_identity("root", None)


def _some_unprivileged_account() -> pwd.struct_passwd:
    for entry in pwd.getpwall():
        if entry.pw_uid != 0:
            return entry
    pytest.skip("no non-root account on this machine")


def test_non_root_agent_may_run_as_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    me = _some_unprivileged_account()
    monkeypatch.setattr(os, "geteuid", lambda: me.pw_uid)
    monkeypatch.setattr(os, "getegid", lambda: me.pw_gid)
    identity = resolve_identity(me.pw_name, None)
    assert (identity.uid, identity.gid) == (me.pw_uid, me.pw_gid)


def test_non_root_agent_cannot_switch_group(monkeypatch: pytest.MonkeyPatch) -> None:
    me = _some_unprivileged_account()
    monkeypatch.setattr(os, "geteuid", lambda: me.pw_uid)
    monkeypatch.setattr(os, "getegid", lambda: me.pw_gid + 1)
    group = grp.getgrgid(me.pw_gid).gr_name
    with pytest.raises(PrivilegeError, match=rf"cannot switch to group '{group}'"):
        resolve_identity(me.pw_name, group)


def test_privilege_argv_names_every_id_and_ends_options() -> None:
    """The setpriv wrapper sets uid, gid and the exact group list, then `--` and the argv."""
    identity = Identity(
        name="deploy",
        uid=1001,
        gid=1002,
        groups=(1002, 27, 100),
        home="/home/deploy",
        shell="/bin/sh",
    )
    argv = privilege_argv("/usr/bin/setpriv", identity, ["/bin/sh", "-c", "--help; id"])
    assert argv == [
        "/usr/bin/setpriv",
        "--reuid=1001",
        "--regid=1002",
        "--groups=1002,27,100",
        "--",
        "/bin/sh",
        "-c",
        "--help; id",
    ]
