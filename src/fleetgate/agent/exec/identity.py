"""Who a command runs as, and the environment it gets.

:func:`resolve_identity` turns the ``username``/``groupname`` of a command into numeric
ids the process is started with; :func:`build_environment` builds the command's clean
environment. Lookups go through ``pwd``/``grp`` and may therefore hit NSS (LDAP, sssd):
async callers run :func:`resolve_identity` in a thread.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass

from fleetgate.agent.errors import PrivilegeError, UnknownGroup, UnknownUser


__all__ = ["BASE_PATH", "DEFAULT_SHELL", "Identity", "build_environment", "resolve_identity"]

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""``PATH`` of every command; the daemon's own ``PATH`` is never passed on."""

DEFAULT_SHELL = "/bin/sh"
"""``SHELL`` when the passwd entry names none."""


@dataclass(frozen=True, slots=True)
class Identity:
    """A resolved account to run a command as.

    Attributes:
        name: the account name.
        uid: the user id.
        gid: the primary group id the process runs with (the requested group, if any).
        groups: the supplementary group ids, ``gid`` first, without duplicates.
        home: the home directory from the passwd entry (it may not exist).
        shell: the login shell from the passwd entry (:data:`DEFAULT_SHELL` if empty).
    """

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str


def resolve_identity(username: str, groupname: str | None) -> Identity:
    """Look up the account and group a command asks for.

    Without ``groupname`` (``None`` or empty) the command runs with the user's primary
    group and full group list, as after a login. With ``groupname`` that group becomes
    the primary group and the user's other groups are kept (like ``newgrp`` or
    ``sudo -u user -g group``); the user must already be a member of it, as primary or
    supplementary group, so naming a group never grants anything new.

    Args:
        username: the account name.
        groupname: the group to run with, or ``None``/empty for the primary group.

    Returns:
        The resolved :class:`Identity`.

    Raises:
        UnknownUser: no such account.
        UnknownGroup: no such group, or the user is not a member of it.
        PrivilegeError: the agent is not root and the identity is not its own.
    """
    try:
        entry = pwd.getpwnam(username)
    except KeyError:
        raise UnknownUser(f"unknown user {username!r}") from None

    # getgrouplist covers /etc/group membership and the primary group alike.
    member_of = _dedupe([entry.pw_gid, *os.getgrouplist(entry.pw_name, entry.pw_gid)])
    gid = entry.pw_gid
    if groupname:
        try:
            group = grp.getgrnam(groupname)
        except KeyError:
            raise UnknownGroup(f"unknown group {groupname!r}") from None
        if group.gr_gid not in member_of:
            raise UnknownGroup(f"user {username!r} is not a member of group {groupname!r}")
        gid = group.gr_gid

    euid = os.geteuid()
    if euid != 0:
        # Without root the process simply inherits our credentials, so anything else
        # would silently run under the wrong identity.
        if entry.pw_uid != euid:
            raise PrivilegeError(
                f"the agent runs as uid {euid} and cannot run commands as {username!r}"
            )
        if groupname and gid != os.getegid():
            raise PrivilegeError(
                f"the agent runs as uid {euid} and cannot switch to group {groupname!r}"
            )

    return Identity(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=gid,
        groups=_dedupe([gid, *member_of]),
        home=entry.pw_dir,
        shell=entry.pw_shell or DEFAULT_SHELL,
    )


def build_environment(identity: Identity, extra: Mapping[str, str]) -> dict[str, str]:
    """Build a command's environment from scratch.

    Nothing is inherited from the daemon's own environment (it may hold secrets and
    its ``PATH`` is not the target user's business). The command's own variables are
    applied last, so they may override the defaults.

    Args:
        identity: the account the command runs as.
        extra: the variables the command asked for.

    Returns:
        A new dictionary suitable as ``env`` of a subprocess.
    """
    env = {
        "PATH": BASE_PATH,
        "HOME": identity.home,
        "USER": identity.name,
        "LOGNAME": identity.name,
        "SHELL": identity.shell or DEFAULT_SHELL,
        "LANG": "C.UTF-8",
    }
    env.update(extra)
    return env


def _dedupe(ids: list[int]) -> tuple[int, ...]:
    """Drop repeated ids, keeping the first occurrence (so the primary stays first)."""
    return tuple(dict.fromkeys(ids))
