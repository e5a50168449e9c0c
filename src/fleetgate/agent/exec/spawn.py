"""Starting a command's process as its user, with a pipe for its merged output.

Dropping privileges: when the agent (root) must become another identity, the process is
started through util-linux ``setpriv`` (``--reuid --regid --groups``), which sets the real,
effective and saved uid and gid and the exact supplementary groups, then execs the shell.
The standard library could do the same in the forked child, but it then cannot use vfork:
the agent's whole address space is forked and every page the event loop touches before
the child execs is copied. Through setpriv the agent spawns with vfork, which measured
about 1.6x more commands per second and a lower latency. Without setpriv on the machine,
the standard library's own switch is used; both paths are covered by the tests. One
difference shows: behind setpriv, a shell that cannot be executed is setpriv's failure
(exit status 127, its message in the output) rather than a start error.

Commands run by the dispatcher take a cheaper path still (:func:`spawn_through`): small
spawner helpers fork them and switch ids in the child, with no second exec and without
forking the agent (:mod:`fleetgate.agent.exec.spawner`); ``spawn`` is their fallback and
the path of the other features (terminals, transfers, SSH sessions).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fleetgate.agent.exec.child import Child
from fleetgate.agent.exec.identity import Identity, build_environment, resolve_identity
from fleetgate.shared.protocol.messages import CommandRun


if TYPE_CHECKING:
    from fleetgate.agent.exec.spawner import RemoteChild
    from fleetgate.agent.exec.spawner_pool import SpawnerPool

__all__ = [
    "SHELL",
    "find_setpriv",
    "needs_switch",
    "prepare",
    "privilege_argv",
    "spawn",
    "spawn_through",
]

SHELL = "/bin/sh"
"""The interpreter of ``shell = "system"`` commands."""

_SETPRIV_DIRS = "/usr/bin:/bin:/usr/sbin:/sbin"
"""Fixed system directories: never a PATH an operator or command could influence."""


@functools.cache
def find_setpriv() -> str | None:
    """The absolute path of util-linux ``setpriv``, or None if it is not installed.

    Looked up once per process: installing util-linux under a running agent takes effect at
    its next start.
    """
    return shutil.which("setpriv", path=_SETPRIV_DIRS)


def privilege_argv(setpriv: str, identity: Identity, argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped so that it runs with exactly ``identity``'s uid, gid and groups."""
    return [
        setpriv,
        f"--reuid={identity.uid}",
        f"--regid={identity.gid}",
        "--groups=" + ",".join(str(g) for g in identity.groups),
        "--",
        *argv,
    ]


def needs_switch(identity: Identity) -> bool:
    """Whether the child must change uid, gid or groups to become ``identity``.

    Only root can switch; anyone else runs commands as themselves (resolve_identity refused
    any other identity). When the daemon already is exactly that identity, no switch is
    needed and the standard library spawns with vfork.
    """
    if os.geteuid() != 0:
        return False
    current = (os.geteuid(), os.getegid(), sorted(set(os.getgroups())))
    return current != (identity.uid, identity.gid, sorted(set(identity.groups)))


def prepare(request: CommandRun) -> tuple[Identity, str]:
    """Resolve the identity and working directory (blocking: NSS, NFS homes)."""
    identity = resolve_identity(request.username, request.groupname)
    return identity, identity.home if os.path.isdir(identity.home) else "/"


def spawn(
    request: CommandRun, identity: Identity, cwd: str, *, setpriv: str | None = None
) -> tuple[Child, int]:
    """Start the process with a fresh pipe for its merged output; return it and the read end.

    The fork and exec happen right here, in the event loop's thread, as asyncio's own
    subprocess support would do them; the exit is awaited through :class:`Child`.

    Args:
        setpriv: path of ``setpriv`` to drop privileges with; None uses the standard
            library's switch in the forked child.
    """
    argv = [SHELL, "-c", request.line]
    switch = needs_switch(identity)
    if switch and setpriv is not None:
        argv, switch = privilege_argv(setpriv, identity, argv), False
    read_fd, write_fd = os.pipe()  # both close-on-exec; Popen dup2()s write_fd to 1 and 2
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            env=build_environment(identity, request.env),
            cwd=cwd,
            start_new_session=True,
            user=identity.uid if switch else None,
            group=identity.gid if switch else None,
            extra_groups=list(identity.groups) if switch else None,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        # Our copy of the write end must go, or the pipe would never report EOF.
        os.close(write_fd)
    os.set_blocking(read_fd, False)
    return Child(popen), read_fd


async def spawn_through(
    spawner: SpawnerPool, request: CommandRun, identity: Identity, cwd: str
) -> tuple[RemoteChild, int]:
    """As :func:`spawn`, for a command that changes identity, through a spawner helper
    (:mod:`fleetgate.agent.exec.spawner`): it forks from a small process and switches
    ids itself, so neither the agent's address space nor a setpriv exec is paid for."""
    read_fd, write_fd = os.pipe()
    try:
        env = build_environment(identity, request.env)
        child = await spawner.spawn([SHELL, "-c", request.line], env, cwd, identity, write_fd)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # the helper's child has its own copy
    os.set_blocking(read_fd, False)
    return child, read_fd
