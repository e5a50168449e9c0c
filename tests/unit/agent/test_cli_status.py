"""``fleetgate-agent status`` rendering and exit statuses, without a daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetgate.agent import cli


def write_config(tmp_path: Path) -> Path:
    key = tmp_path / "server.key"
    key.write_text("k\n")
    key.chmod(0o600)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'runtime_dir = "{tmp_path / "run"}"\n[control_plane]\nurl = "http://127.0.0.1:1"\n'
        f'[identity]\nserver_id = "00000000-0000-0000-0000-000000000001"\nkey_file = "{key}"\n'
    )
    return config


def test_status_without_a_daemon_is_unavailable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "--config", str(write_config(tmp_path))]) == cli.EXIT_UNAVAILABLE
    assert "no agent answers on" in capsys.readouterr().err


def test_status_rendering_of_a_reconnecting_agent() -> None:
    text = cli._render_status(
        {
            "agent_version": "0.1.0",
            "pid": 7,
            "server_id": "s",
            "control_plane": "https://cp.example",
            "uptime": 12.4,
            "connection": {"status": "waiting", "last_error": "refused"},
            "unconfirmed_reports": 3,
            "active_commands": 1,
        }
    )
    assert "connection:          waiting (last error: refused)" in text
    assert "unconfirmed reports: 3" in text
    assert "uptime:              12 s" in text


def test_register_needs_a_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["register", "--url", "http://127.0.0.1:1", "--name", "x"]
    assert cli.main([*args, "--config", str(tmp_path / "a.toml")]) == cli.EXIT_CONFIG
    assert "--token" in capsys.readouterr().err
