"""``fleetgate-agent sudo install`` / ``uninstall``: the approval plugin, sudo.conf and sudoers drop-in.

Install (idempotent, as root): create the sudo group if missing, compile the approval
plugin (``fleet_approval.c``, shipped in this package) into ``plugin_dir``, write the
sudoers drop-in (validated with ``visudo -cf`` before it is moved in place, 0440), then
add a marked block to ``/etc/sudo.conf`` that loads the plugin, and check that sudo still
works (``sudo -n true`` as root); if it does not, sudo.conf is put back as it was.
Uninstall removes exactly what install added: the block (the rest of sudo.conf is kept
byte for byte, and a sudo.conf install created is deleted), the drop-in, the plugin and
the group if install created it.
"""

from __future__ import annotations

import contextlib
import grp
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fleetgate.agent.errors import AgentError
from fleetgate.shared.atomic import atomic_write


__all__ = ["SudoInstallError", "SudoLayout", "install", "uninstall"]

SOURCE = Path(__file__).with_name("fleet_approval.c")
BEGIN = "# BEGIN fleetgate-agent: managed by `fleetgate-agent sudo install`; `fleetgate-agent sudo uninstall` removes it"
END = "# END fleetgate-agent"
CREATED = "# fleetgate-agent created this file"
ADDED_NEWLINE = "# fleetgate-agent added the newline above"
GROUP_MARK = "# fleetgate-agent created the group "
_TIMEOUT = 60


class SudoInstallError(AgentError):
    """The installation cannot be done (the message says why; nothing was left half done)."""


@dataclass(frozen=True)
class SudoLayout:
    """Where the pieces go; the defaults are the system's."""

    socket: Path
    group: str
    sudo_conf: Path = Path("/etc/sudo.conf")
    sudoers_file: Path = Path("/etc/sudoers.d/fleetgate-agent")
    plugin_dir: Path = Path("/usr/libexec/fleetgate-agent")

    @property
    def plugin(self) -> Path:
        """The compiled plugin."""
        return self.plugin_dir / "fleet_approval.so"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SudoInstallError(f"{argv[0]}: {exc}") from exc


def _tool(name: str) -> str:
    path = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        raise SudoInstallError(f"{name} is not installed")
    return path


def _check_sudo() -> None:
    out = _run(_tool("sudo"), "-V").stdout
    found = re.search(r"Sudo version (\d+)\.(\d+)", out)
    if found is None or (int(found[1]), int(found[2])) < (1, 9):
        raise SudoInstallError("sudo 1.9 or later is required (approval plugins)")


def _sudoers(layout: SudoLayout, created_group: bool) -> str:
    mark = f"{GROUP_MARK}{layout.group}\n" if created_group else ""
    return (
        "# Managed by the fleet agent (`fleetgate-agent sudo install`); do not edit.\n"
        f"{mark}"
        f"# Members of {layout.group} may call sudo; the fleet agent decides every call\n"
        "# (approval plugin in /etc/sudo.conf): work-session patterns inside agent\n"
        "# sessions, refused elsewhere. NOSETENV: no variables from the command line.\n"
        f"%{layout.group} ALL=(ALL:ALL) NOPASSWD: NOSETENV: ALL\n"
    )


def _block(layout: SudoLayout, rest: str, *, created: bool, added_newline: bool) -> str:
    lines = [BEGIN]
    if created:
        lines.append(CREATED)
    if added_newline:
        lines.append(ADDED_NEWLINE)
    if not re.search(r"^\s*Plugin\s", rest, re.MULTILINE):
        # With any Plugin line, sudo no longer loads sudoers by default: name it.
        lines += [
            "Plugin sudoers_policy sudoers.so",
            "Plugin sudoers_io sudoers.so",
            "Plugin sudoers_audit sudoers.so",
        ]
    lines.append(f"Plugin fleet_approval {layout.plugin} socket={layout.socket}")
    lines.append(END)
    return "\n".join(lines) + "\n"


def _split(text: str) -> tuple[str, str | None]:
    """``(the file without our block, the block)``."""
    start = text.find(BEGIN + "\n")
    if start < 0:
        return text, None
    end = text.find(END + "\n", start)
    if end < 0:
        raise SudoInstallError("sudo.conf has a fleetgate-agent block without its end line")
    end += len(END) + 1
    return text[:start] + text[end:], text[start:end]


def _compile(layout: SudoLayout) -> None:
    layout.plugin_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = layout.plugin_dir / ".fleet_approval.so.new"
    built = _run(_tool("gcc"), "-shared", "-fPIC", "-O2", "-Wall", "-o", str(tmp), str(SOURCE))
    if built.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise SudoInstallError(f"compiling the sudo plugin failed: {built.stderr.strip()[:2000]}")
    os.chmod(tmp, 0o644)  # sudo refuses a plugin others may write
    os.replace(tmp, layout.plugin)


def _install_sudoers(layout: SudoLayout, created_group: bool) -> None:
    def visudo(tmp: Path) -> None:  # the temporary file starts with a dot: sudo skips it
        checked = _run(_tool("visudo"), "-cf", str(tmp))
        if checked.returncode != 0:
            raise SudoInstallError(f"visudo refused the drop-in: {checked.stdout}{checked.stderr}")

    atomic_write(layout.sudoers_file, _sudoers(layout, created_group), 0o440, check=visudo)


def install(layout: SudoLayout) -> list[str]:
    """Install or refresh everything; returns what was done, one line each.

    Raises:
        SudoInstallError: not root, sudo too old, a tool missing, or sudo would break.
    """
    if os.geteuid() != 0:
        raise SudoInstallError("fleetgate-agent sudo install must run as root")
    if " " in str(layout.socket) or " " in str(layout.plugin):
        raise SudoInstallError("the socket and plugin paths must not contain spaces")
    _check_sudo()
    done: list[str] = []
    created_group = False
    try:
        grp.getgrnam(layout.group)
        if layout.sudoers_file.exists():
            created_group = GROUP_MARK + layout.group in layout.sudoers_file.read_text()
    except KeyError:
        made = _run(_tool("groupadd"), "--system", layout.group)
        if made.returncode != 0:
            raise SudoInstallError(f"groupadd {layout.group}: {made.stderr.strip()}") from None
        created_group = True
        done.append(f"created group {layout.group}")
    _compile(layout)
    done.append(f"built {layout.plugin}")
    _install_sudoers(layout, created_group)
    done.append(f"wrote {layout.sudoers_file} (checked with visudo)")
    before = layout.sudo_conf.read_text() if layout.sudo_conf.exists() else None
    rest, old = _split(before or "")
    created = before is None or (old is not None and CREATED in old)
    added_newline = bool(rest) and not rest.endswith("\n")
    if old is not None and ADDED_NEWLINE in old:
        added_newline, rest = True, rest.removesuffix("\n")
    text = rest + ("\n" if added_newline else "")
    text += _block(layout, rest, created=created, added_newline=added_newline)
    atomic_write(layout.sudo_conf, text, 0o644)
    works = _run(_tool("sudo"), "-n", "true")
    if works.returncode != 0:
        if before is None:
            layout.sudo_conf.unlink()
        else:
            atomic_write(layout.sudo_conf, before, 0o644)
        raise SudoInstallError(f"sudo failed with the plugin, sudo.conf restored: {works.stderr}")
    done.append(f"loaded the plugin from {layout.sudo_conf} (socket {layout.socket})")
    return done


def uninstall(layout: SudoLayout) -> list[str]:
    """Remove what :func:`install` added (nothing else); returns what was done.

    Raises:
        SudoInstallError: not root, or the sudo.conf block is damaged.
    """
    if os.geteuid() != 0:
        raise SudoInstallError("fleetgate-agent sudo uninstall must run as root")
    done: list[str] = []
    if layout.sudo_conf.exists():
        rest, block = _split(layout.sudo_conf.read_text())
        if block is not None:
            if CREATED in block and not rest:
                layout.sudo_conf.unlink()
            else:
                if ADDED_NEWLINE in block:
                    rest = rest.removesuffix("\n")
                atomic_write(layout.sudo_conf, rest, 0o644)
            done.append(f"removed the plugin from {layout.sudo_conf}")
    created_group = False
    if layout.sudoers_file.exists():
        created_group = GROUP_MARK + layout.group in layout.sudoers_file.read_text()
        layout.sudoers_file.unlink()
        done.append(f"removed {layout.sudoers_file}")
    if layout.plugin.exists():
        layout.plugin.unlink()
        done.append(f"removed {layout.plugin}")
        with contextlib.suppress(OSError):
            layout.plugin_dir.rmdir()
    if created_group:
        gone = _run(_tool("groupdel"), layout.group)
        if gone.returncode == 0:
            done.append(f"removed group {layout.group}")
    checked = _run(_tool("visudo"), "-c")
    if checked.returncode != 0:
        raise SudoInstallError(f"visudo -c fails after uninstall: {checked.stdout}")
    return done
