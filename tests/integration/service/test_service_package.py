"""The .deb (and .rpm): build it, install it on this machine, run it, purge it.

Marked ``package``: it builds the package's virtualenv (about 20-40 s) and installs the
package with dpkg, so it needs root, dpkg-deb and Debian's python3-venv; it skips with a
reason otherwise, and also when a fleetgate-agent package is already installed here (it
would not replace a real installation).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetgate import __version__
from tests.support.controlplane import REPO_ROOT, running_control_plane


pytestmark = [
    pytest.mark.package,
    pytest.mark.timeout(300),
    pytest.mark.root,  # installs a package
    pytest.mark.skipif(
        shutil.which("dpkg-deb") is None or not Path("/usr/bin/python3").exists(),
        reason="needs dpkg-deb and Debian's python3 (make debs)",
    ),
]

AGENT_DISTRIBUTIONS = {
    # pyproject's [project] dependencies and what they need, nothing else.
    "websockets",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-extensions",
    "typing-inspection",
    "structlog",
    "cryptography",
    "cffi",
    "pycparser",
    "asyncssh",  # the in-process SSH server (imported when an ssh channel opens)
    "tomlkit",
}
PREFIX = Path("/opt/fleetgate-agent")


def run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False
    )


def installed() -> bool:
    result = run("dpkg-query", "-W", "-f=${Status}", "fleetgate-agent")
    return "installed" in result.stdout or "config-files" in result.stdout


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "PIP": str(Path(sys.executable).parent / "pip")}
    result = subprocess.run(
        [str(REPO_ROOT / "packaging" / "build"), str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture
def deb(packages: Path) -> Iterator[Path]:
    if installed():
        pytest.skip("a fleetgate-agent package is installed on this machine; not replacing it")
    yield (
        packages
        / f"fleetgate-agent_{__version__}_{run('dpkg', '--print-architecture').stdout.strip()}.deb"
    )
    if installed():
        run("dpkg", "--purge", "fleetgate-agent")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_deb_installs_runs_and_purges_cleanly(deb: Path, tmp_path: Path) -> None:
    contents = run("dpkg-deb", "--contents", deb).stdout
    # The package's virtualenv holds the agent and exactly its dependencies: nothing of the
    # control plane or agentctl, and no distribution the agent does not import.
    distributions = {
        re.sub(r"-[^-]+\.dist-info$", "", name).lower().replace("_", "-")
        for name in re.findall(r"site-packages/([^/\s]+\.dist-info)/", contents)
    }
    assert distributions == AGENT_DISTRIBUTIONS
    assert "site-packages/fleetgate/agent/cli.py" in contents
    assert "site-packages/fleetgate/shared/protocol/" in contents
    for foreign in ("fleetgate/controlplane", "fleetgate/agentctl"):
        assert foreign not in contents

    install = run("dpkg", "--install", deb)
    assert install.returncode == 0, install.stdout + install.stderr
    assert "not registered yet" in install.stdout
    for directory in (
        "/etc/fleetgate-agent",
        "/var/lib/fleetgate-agent",
        "/var/log/fleetgate-agent",
    ):
        assert mode(Path(directory)) == 0o700, directory
        assert Path(directory).stat().st_uid == 0
    assert mode(Path("/etc/fleetgate-agent/agent.toml")) == 0o600
    assert mode(Path("/lib/systemd/system/fleetgate-agent.service")) == 0o644
    assert (REPO_ROOT / "systemd/fleetgate-agent.service").read_text() == Path(
        "/lib/systemd/system/fleetgate-agent.service"
    ).read_text()
    assert mode(PREFIX / "bin/agent") == 0o755
    assert os.readlink("/usr/sbin/fleetgate-agent") == str(PREFIX / "bin/agent")
    # The environment is the distribution's Python, not the build machine's paths.
    assert os.readlink(PREFIX / "bin/python3.11").startswith("/usr/bin/python3")
    assert "/tmp" not in (PREFIX / "pyvenv.cfg").read_text()
    assert not [p for p in (PREFIX / "bin").iterdir() if p.name == "pip"]
    # Its bytecode is compiled as by -OO (docstrings are resident memory in a daemon).
    doc = run(
        PREFIX / "bin/python3", "-I", "-c", "import fleetgate.agent.daemon as d; print(d.__doc__)"
    )
    assert doc.stdout.strip() == "None", doc.stderr

    version = run("/usr/sbin/fleetgate-agent", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"fleetgate-agent {__version__}"
    # The default configuration is commented out: not registered is a config error (78).
    unregistered = run("/usr/sbin/fleetgate-agent", "check-config")
    assert unregistered.returncode == 78
    assert "control_plane.url" in unregistered.stderr

    # The installed agent registers and connects to a real control plane.
    with running_control_plane(tmp_path / "cp") as cp:
        config = tmp_path / "etc" / "agent.toml"
        config.parent.mkdir()
        config.write_text(
            f'state_dir = "{tmp_path / "state"}"\nruntime_dir = "{tmp_path / "run"}"\n'
            f'logs_dir = "{tmp_path / "logs"}"\n'
        )
        reg = run(
            *("/usr/sbin/fleetgate-agent", "register", "--url", cp.url, "--name", "pkg-01"),
            *("--token", cp.admin_token, "--config", config),
        )
        assert reg.returncode == 0, reg.stderr
        with (tmp_path / "agent.log").open("wb") as log:
            daemon = subprocess.Popen(
                [str(PREFIX / "bin/agent"), "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            deadline = time.monotonic() + 30
            while (
                status := run("/usr/sbin/fleetgate-agent", "status", "--config", config)
            ).returncode:
                assert daemon.poll() is None, (tmp_path / "agent.log").read_text()
                assert time.monotonic() < deadline, status.stdout + status.stderr
                time.sleep(0.1)
            assert "connected since" in status.stdout
            # Idle, it has not loaded cryptography (registration made the SSH host key).
            maps = Path(f"/proc/{daemon.pid}/maps").read_text()
            assert "cryptography/hazmat/bindings" not in maps
        finally:
            daemon.terminate()
            assert daemon.wait(30) == 0
    # With the sudo plugin installed, an upgrade builds it again from the new version's
    # source (it speaks that version's decision socket); removal takes it out again.
    sudo_conf = Path("/etc/sudo.conf")
    before = sudo_conf.read_text() if sudo_conf.exists() else None
    shutil.copy(config, "/etc/fleetgate-agent/agent.toml")
    try:
        assert run("/usr/sbin/fleetgate-agent", "sudo", "install").returncode == 0
        plugin = Path("/usr/libexec/fleetgate-agent/fleet_approval.so")
        plugin.write_bytes(b"an older version's plugin")
        upgrade = run("dpkg", "--install", deb)
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        assert plugin.read_bytes().startswith(b"\x7fELF")
    finally:
        if Path("/etc/sudoers.d/fleetgate-agent").exists():
            run("/usr/sbin/fleetgate-agent", "sudo", "uninstall")
    assert (sudo_conf.read_text() if sudo_conf.exists() else None) == before

    # Nothing was written under /opt at run time (the bytecode is shipped).
    verify = run("dpkg", "--verify", "fleetgate-agent")
    assert verify.returncode == 0, verify.stdout

    # Removal keeps configuration and state; purge deletes everything.
    Path("/var/lib/fleetgate-agent/marker").write_text("state")
    remove = run("dpkg", "--remove", "fleetgate-agent")
    assert remove.returncode == 0, remove.stderr
    assert not PREFIX.exists()
    assert not Path("/usr/sbin/fleetgate-agent").exists()
    assert Path("/etc/fleetgate-agent/agent.toml").exists()
    assert Path("/var/lib/fleetgate-agent/marker").exists()
    purge = run("dpkg", "--purge", "fleetgate-agent")
    assert purge.returncode == 0, purge.stderr
    for leftover in (
        "/etc/fleetgate-agent",
        "/var/lib/fleetgate-agent",
        "/var/log/fleetgate-agent",
        "/etc/systemd/system/multi-user.target.wants/fleetgate-agent.service",
    ):
        assert not os.path.lexists(leftover), leftover
    assert not installed()


@pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="rpmbuild not installed (rpm)")
def test_rpm_is_built_with_the_same_files(packages: Path) -> None:
    rpm = next(packages.glob(f"fleetgate-agent-{__version__}-1.*.rpm"))
    files = run("rpm", "-qlp", rpm).stdout.split()
    assert "/opt/fleetgate-agent/bin/agent" in files
    assert "/usr/lib/systemd/system/fleetgate-agent.service" in files
    assert "/etc/fleetgate-agent/agent.toml" in files
    assert not [f for f in files if "fleetgate/controlplane" in f or "fastapi" in f]
    scripts = run("rpm", "-qp", "--scripts", rpm).stdout
    assert "systemctl enable fleetgate-agent.service" in scripts
    assert "systemctl stop fleetgate-agent.service" in scripts
    config = run("rpm", "-qp", "--configfiles", rpm).stdout.split()
    assert config == ["/etc/fleetgate-agent/agent.toml"]
