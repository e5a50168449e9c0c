"""Throw-away Unix accounts for tests that run commands as another user.

:func:`temporary_user` creates a uniquely named user with a home directory, shell
``/bin/sh`` and one uniquely named supplementary group, and removes both afterwards.
It needs root and a test marked ``@pytest.mark.root``; without root that test is skipped.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NamedTuple

import pytest


__all__ = ["CreatedUser", "processes_gone", "require_root", "temporary_user"]


class CreatedUser(NamedTuple):
    """A user made by :func:`temporary_user`."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    """All group ids of the user, primary first."""
    home: str
    group_name: str
    """The supplementary group created with the user."""
    group_gid: int


current_test_is_root = False
"""Whether the running test carries ``@pytest.mark.root`` (set by ``tests/conftest.py``)."""


def processes_gone(uid: int, timeout: float) -> bool:
    """Whether every process of ``uid`` is gone within ``timeout`` seconds (polled /proc).

    A shell ended by the agent dies within its hangup grace; wait for that before the
    account is removed (``userdel`` refuses a user with processes).
    """
    deadline = time.monotonic() + timeout
    while True:
        owners = set()
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit():
                    owners.add(proc.stat().st_uid)
            except OSError:
                continue  # it ended meanwhile
        if uid not in owners:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def require_root() -> None:
    """Skip the calling test unless the suite runs as root; it must be marked ``root``."""
    if not current_test_is_root:
        pytest.fail("a test that needs root must be marked @pytest.mark.root")
    if os.geteuid() != 0:
        pytest.skip("needs root: creates users and switches uid (run the suite as root)")


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


@contextmanager
def temporary_user() -> Iterator[CreatedUser]:
    """Create a user with a supplementary group; delete both (and the home) on exit.

    Yields:
        The created user.
    """
    require_root()
    name = "t" + secrets.token_hex(4)
    group_name = "g" + secrets.token_hex(4)
    _run("groupadd", group_name)
    try:
        _run("useradd", "--create-home", "--shell", "/bin/sh", "--groups", group_name, name)
        try:
            entry = pwd.getpwnam(name)
            supplementary = grp.getgrnam(group_name).gr_gid
            yield CreatedUser(
                name=name,
                uid=entry.pw_uid,
                gid=entry.pw_gid,
                groups=(entry.pw_gid, supplementary),
                home=entry.pw_dir,
                group_name=group_name,
                group_gid=supplementary,
            )
        finally:
            # A process of the user that is ending gets a few seconds (a file worker exits
            # just after the client has its answer, and agentctl cp exits at once); one
            # still alive then fails userdel, and so flags the test.
            with suppress(KeyError):
                processes_gone(pwd.getpwnam(name).pw_uid, 10)
            _run("userdel", "--remove", name)
    finally:
        _run("groupdel", group_name)
