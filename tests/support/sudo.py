"""Real sudo in tests: install the fleet approval plugin into this machine's /etc for a
while, make session users, and read the plugin's refusals.

:func:`installed_sudo_plugin` runs ``fleetgate-agent sudo install`` against an agent's config and
``fleetgate-agent sudo uninstall`` afterwards, then checks that /etc/sudo.conf is byte for byte what
it was and that ``visudo -c`` passes: a test never leaves sudo broken. Reusable from any
process-session driver (commands now, websh later): a refusal is the plugin's line
``sudo: refused by the fleet agent (<code>): ...``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.controlplane import REPO_ROOT
from tests.support.users import CreatedUser, require_root, temporary_user


__all__ = [
    "SUDOERS_FILE",
    "SUDO_CONF",
    "installed_sudo_plugin",
    "refusal_code",
    "require_sudo",
    "sudo_session_user",
    "sudoers_rule",
]

SUDO_CONF = Path("/etc/sudo.conf")
SUDOERS_FILE = Path("/etc/sudoers.d/fleetgate-agent")
REFUSAL = re.compile(r"sudo: refused by the fleet agent \(([a-z_]+)\): ")


def require_sudo() -> None:
    """Skip unless root with sudo >= 1.9, gcc and the plugin header (Debian's sudo)."""
    require_root()
    for tool in ("sudo", "visudo", "gcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (make debs)")
    if not Path("/usr/include/sudo_plugin.h").exists():
        pytest.skip("needs /usr/include/sudo_plugin.h (Debian's sudo package)")


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetgate.agent", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@contextmanager
def installed_sudo_plugin(config: Path, plugin_dir: Path) -> Iterator[None]:
    """``fleetgate-agent sudo install`` for ``config``'s socket; uninstall and verify on exit."""
    require_sudo()
    before = SUDO_CONF.read_bytes() if SUDO_CONF.exists() else None
    if SUDOERS_FILE.exists():
        pytest.skip(f"{SUDOERS_FILE} exists: the plugin is installed for real here")
    done = _agent("sudo", "install", "--config", str(config), "--plugin-dir", str(plugin_dir))
    try:
        assert done.returncode == 0, done.stderr
        again = _agent("sudo", "install", "--config", str(config), "--plugin-dir", str(plugin_dir))
        assert again.returncode == 0, again.stderr  # idempotent
        yield
    finally:
        gone = _agent("sudo", "uninstall", "--config", str(config), "--plugin-dir", str(plugin_dir))
        after = SUDO_CONF.read_bytes() if SUDO_CONF.exists() else None
        checked = subprocess.run(["visudo", "-c"], capture_output=True, text=True, check=False)
        if after != before and before is not None:
            SUDO_CONF.write_bytes(before)  # never leave the machine's sudo changed
    assert gone.returncode == 0, gone.stderr
    assert after == before, "sudo.conf was not restored exactly"
    assert not SUDOERS_FILE.exists()
    assert checked.returncode == 0, checked.stdout


@contextmanager
def sudo_session_user(group: str) -> Iterator[CreatedUser]:
    """A throw-away user in the fleet sudo ``group`` (as an operator sets session users up)."""
    with temporary_user() as user:
        subprocess.run(["usermod", "-aG", group, user.name], check=True, capture_output=True)
        yield user


@contextmanager
def sudoers_rule(user: str, rule: str) -> Iterator[None]:
    """A sudoers drop-in giving ``user`` its own right (``rule`` after ``user ALL=``)."""
    path = Path(f"/etc/sudoers.d/fleettest-{user}")
    tmp = Path(f"/etc/sudoers.d/.fleettest-{user}")
    tmp.write_text(f"{user} ALL={rule}\n", encoding="utf-8")
    os.chmod(tmp, 0o440)
    checked = subprocess.run(
        ["visudo", "-cf", str(tmp)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout
    tmp.rename(path)
    try:
        yield
    finally:
        path.unlink()


def refusal_code(output: str) -> str | None:
    """The code of the plugin's refusal line in ``output``, if there is one."""
    found = REFUSAL.search(output)
    return found.group(1) if found else None
