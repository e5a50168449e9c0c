"""The systemd unit: ``systemd-analyze verify`` passes, and it agrees with the agent's code.

There is no running systemd here; ``verify`` works offline. It is run with ``--root`` on a
scratch tree holding the distribution's unit files, our unit where the package puts it,
and a stand-in executable at the ExecStart path (verify checks that it exists).
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from fleetgate.agent.cli import EXIT_CONFIG
from fleetgate.agent.config import DEFAULT_CONFIG_PATH, AgentConfig
from fleetgate.agent.config.resources import LimitsConfig
from tests.support.controlplane import REPO_ROOT


UNIT = REPO_ROOT / "systemd" / "fleetgate-agent.service"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir(),
    reason="systemd-analyze is not installed (Debian package systemd; make debs)",
)


def verify(tmp_path: Path, unit_text: str) -> subprocess.CompletedProcess[str]:
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/lib/systemd/system/fleetgate-agent.service").write_text(unit_text)
    exe = root / "opt/fleetgate-agent/bin/agent"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return subprocess.run(
        [
            *("systemd-analyze", "verify", "--man=no", f"--root={root}"),
            "/usr/lib/systemd/system/fleetgate-agent.service",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_systemd_analyze_verify_passes_without_a_warning(tmp_path: Path) -> None:
    result = verify(tmp_path, UNIT.read_text())
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("KillMode=mixed", "KillMode=mixed\nWatchdogSecs=30")
    result = verify(tmp_path, broken)
    assert "Unknown key" in result.stderr


def service_section() -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return dict(parser["Service"])


def test_the_unit_agrees_with_the_agent() -> None:
    service = service_section()
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    # The configuration error exit status is not restarted (pinned to the code's value).
    assert service["RestartPreventExitStatus"].split() == [str(EXIT_CONFIG)]
    limits = LimitsConfig()
    assert int(service["TimeoutStopSec"]) > limits.shutdown_grace + limits.kill_grace
    assert service["KillMode"] == "mixed"
    # The directories systemd makes are the agent's defaults.
    defaults = AgentConfig.model_fields
    assert defaults["state_dir"].default == Path("/var/lib") / service["StateDirectory"]
    assert defaults["runtime_dir"].default == Path("/run") / service["RuntimeDirectory"]
    assert defaults["logs_dir"].default == Path("/var/log") / service["LogsDirectory"]
    assert DEFAULT_CONFIG_PATH.parent == Path("/etc") / service["ConfigurationDirectory"]
    for kind in ("State", "Runtime", "Logs", "Configuration"):
        assert service[f"{kind}DirectoryMode"] == "0700"
    assert "/etc/fleetgate-agent/agent.toml" in service["ExecStart"]
    for leftout in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "CapabilityBoundingSet"):
        assert leftout not in service  # each would break commands; see the unit's comments
