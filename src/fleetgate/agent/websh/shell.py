"""Starting a login shell on a fresh PTY, as the terminal's user.

The shell is a session leader (``setsid``) with the PTY's slave as controlling terminal,
runs with exactly the user's uid, gid and supplementary groups (the standard library's
switch in the forked child, as ``fleetgate.agent.exec.spawn`` does without setpriv: setpriv cannot
set ``argv[0]``, and a login shell is told it is one by an ``argv[0]`` starting with ``-``),
starts in the home directory with an environment built from scratch, and gets ``umask``
022 as after login(1). The slave belongs to the user (group ``tty``, mode 0620, as sshd
does) so that programs that open the terminal by name (``tty``, ``sudo``, ``ssh``) can.
"""

from __future__ import annotations

import fcntl
import grp
import os
import struct
import subprocess
import termios
from dataclasses import dataclass
from pathlib import Path

from fleetgate.agent.errors import ChannelRefused
from fleetgate.agent.exec.identity import BASE_PATH, DEFAULT_SHELL, Identity
from fleetgate.agent.exec.spawn import needs_switch


__all__ = [
    "ShellProcess",
    "choose_shell",
    "login_argv0",
    "login_environment",
    "set_window_size",
    "spawn_shell",
]

SHELLS_FILE = Path("/etc/shells")
LOGIN_UMASK = 0o022


@dataclass(frozen=True, slots=True)
class ShellProcess:
    """A started shell: its process and the PTY master (non-blocking, owned by the caller)."""

    process: subprocess.Popen[bytes]
    master_fd: int
    shell: str

    @property
    def pid(self) -> int:
        """The shell's pid, which is also its session id and process group id."""
        return self.process.pid


def choose_shell(identity: Identity, requested: str | None, shells_file: Path = SHELLS_FILE) -> str:
    """The shell to start: the passwd entry's, or a requested one listed in /etc/shells.

    Raises:
        ChannelRefused: ``invalid_shell`` when the requested shell is not listed.
    """
    if not requested:
        return identity.shell or DEFAULT_SHELL
    try:
        listed = {
            line.strip()
            for line in shells_file.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        }
    except OSError:
        listed = set()
    if requested not in listed:
        raise ChannelRefused("invalid_shell", f"shell {requested!r} is not listed in {shells_file}")
    return requested


def login_argv0(shell: str) -> str:
    """``-bash`` for ``/bin/bash``: the convention that makes a shell a login shell."""
    return "-" + os.path.basename(shell)


def login_environment(identity: Identity, shell: str, term: str) -> dict[str, str]:
    """The environment of a fresh login; nothing comes from the daemon's own."""
    return {
        "HOME": identity.home,
        "USER": identity.name,
        "LOGNAME": identity.name,
        "SHELL": shell,
        "PATH": BASE_PATH,
        "TERM": term,
        "LANG": "C.UTF-8",
    }


def set_window_size(fd: int, rows: int, cols: int) -> None:
    """Set the PTY's size; the kernel sends SIGWINCH to the foreground process group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _tty_gid() -> int | None:
    try:
        return grp.getgrnam("tty").gr_gid
    except KeyError:
        return None


def _become_controlling_terminal() -> None:  # pragma: no cover - runs in the child
    # After setsid() (start_new_session) the child has no controlling terminal; make
    # the PTY slave on fd 0 its controlling terminal, as login does.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def spawn_shell(
    identity: Identity, shell: str, env: dict[str, str], rows: int, cols: int
) -> ShellProcess:
    """Open a PTY and start ``shell`` as a login shell on it (blocking: fork, exec).

    Raises:
        ChannelRefused: ``spawn_failed`` when the shell cannot be started.
    """
    master, slave = os.openpty()
    try:
        set_window_size(master, rows, cols)
        attrs = termios.tcgetattr(slave)
        attrs[0] |= getattr(
            termios, "IUTF8", 0o40000
        )  # backspace over a multibyte character in cooked mode
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        if os.geteuid() == 0:
            tty_gid = _tty_gid()
            os.fchown(slave, identity.uid, identity.gid if tty_gid is None else tty_gid)
            os.fchmod(slave, 0o620)
        switch = needs_switch(identity)
        cwd = identity.home if os.path.isdir(identity.home) else "/"
        try:
            process = subprocess.Popen(
                [login_argv0(shell)],
                executable=shell,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                cwd=cwd,
                umask=LOGIN_UMASK,
                start_new_session=True,
                preexec_fn=_become_controlling_terminal,  # noqa: PLW1509 - nothing else fits
                user=identity.uid if switch else None,
                group=identity.gid if switch else None,
                extra_groups=list(identity.groups) if switch else None,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise ChannelRefused("spawn_failed", f"cannot start {shell}: {exc}") from exc
    except BaseException:
        os.close(master)
        raise
    finally:
        # The child holds its own copies; ours would keep the PTY from reporting EOF.
        os.close(slave)
    os.set_blocking(master, False)
    return ShellProcess(process=process, master_fd=master, shell=shell)
