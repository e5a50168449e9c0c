"""The audit log (rotation, modes) and the in-place TOML editor used by ``fleetgate-agent register``."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

import pytest

from fleetgate.agent.audit import AuditLog
from fleetgate.agent.errors import ConfigError
from fleetgate.agent.system.tomledit import set_keys


def test_audit_lines_are_json_and_the_file_is_root_only(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "logs" / "audit.log")
    audit.open()
    audit.record("command.received", command_id="c1", user="root", line="id -un")
    audit.record("command.finished", command_id="c1", user="root", exit_code=0)
    audit.close()
    lines = [json.loads(x) for x in (tmp_path / "logs" / "audit.log").read_text().splitlines()]
    assert [(x["event"], x["command_id"]) for x in lines] == [
        ("command.received", "c1"),
        ("command.finished", "c1"),
    ]
    assert lines[1]["exit_code"] == 0
    assert "ts" in lines[0]
    assert stat.S_IMODE((tmp_path / "logs" / "audit.log").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "logs").stat().st_mode) == 0o700


def test_audit_reopens_with_0600_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"event":"old"}\n')
    path.chmod(0o644)
    audit = AuditLog(path)
    audit.open()
    audit.record("command.started", command_id="c2")
    audit.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [json.loads(x)["event"] for x in path.read_text().splitlines()] == [
        "old",
        "command.started",
    ]


def test_audit_rotates_by_size_and_keeps_backups(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = AuditLog(path, max_bytes=4096, backups=2)
    audit.open()
    for n in range(200):
        audit.record("command.received", command_id=f"c{n}", line="x" * 50)
    audit.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.log", "audit.log.1", "audit.log.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 4096
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    # The newest lines are in audit.log, nothing is torn across files.
    last = [json.loads(x) for x in path.read_text().splitlines()]
    assert last[-1]["command_id"] == "c199"
    rotated = [json.loads(x) for x in (tmp_path / "audit.log.1").read_text().splitlines()]
    assert int(rotated[-1]["command_id"][1:]) + 1 == int(last[0]["command_id"][1:])


def test_set_keys_keeps_comments_and_other_keys() -> None:
    text = (
        "# managed by hand\n"
        'state_dir = "/srv/agent"\n\n'
        "[control_plane]\n"
        "# where to dial\n"
        'url = "https://old.example"\n'
        "verify_tls = true\n\n"
        "[limits]\n"
        "kill_grace = 2\n"
    )
    out = set_keys(text, "control_plane", {"url": "https://new.example"})
    out = set_keys(out, "identity", {"server_id": "abc", "key_file": "/k"})
    assert "# managed by hand" in out
    assert "# where to dial" in out
    parsed = tomllib.loads(out)
    assert parsed["control_plane"] == {"url": "https://new.example", "verify_tls": True}
    assert parsed["identity"] == {"server_id": "abc", "key_file": "/k"}
    assert parsed["limits"] == {"kill_grace": 2}
    assert parsed["state_dir"] == "/srv/agent"
    removed = tomllib.loads(set_keys(out, "identity", {"server_id": None}))
    assert removed["identity"] == {"key_file": "/k"}


def test_set_keys_does_not_touch_commented_keys_or_other_sections() -> None:
    text = '[identity]\n# server_id = "example"\n[other]\nserver_id = "keep"\n'
    parsed = tomllib.loads(set_keys(text, "identity", {"server_id": 'q"uote'}))
    assert parsed == {"identity": {"server_id": 'q"uote'}, "other": {"server_id": "keep"}}


@pytest.mark.parametrize("value", ["caf\u00e9", "\U0001f680 rocket", "tab\tand\nnewline", "\\x00"])
def test_set_keys_round_trips_any_string(value: str) -> None:
    """Non-BMP text and control characters read back unchanged (JSON escapes did not)."""
    out = set_keys("# kept\n[identity]\n", "identity", {"key_file": value})
    assert tomllib.loads(out) == {"identity": {"key_file": value}}
    assert "# kept" in out


def test_set_keys_refuses_a_file_that_is_not_toml() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        set_keys("[identity\nx = 1\n", "identity", {"server_id": "abc"})
